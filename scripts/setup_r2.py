"""Create and configure the user-data bucket through the S3 API (R2, or any S3 endpoint).

Idempotent: run it as often as you like; it says what it created, changed or left alone.
Reads the same environment variables as the API (R2_ACCOUNT_ID or S3_ENDPOINT_URL, R2_BUCKET,
R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.config import Settings
from chalicelib.errors import Misconfigured
from chalicelib.storage.s3 import build_s3_client

LIFECYCLE_RULES = {
    # Session records, turn state and replay logs are worthless once a session is idle.
    "expire-stale-sessions": "sessions/",
    # Connection records outlive their websocket only when $disconnect never ran.
    "expire-stale-connections": "connections/",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser uploads from ORIGIN (repeatable), e.g. https://app.example.com")
    parser.add_argument("--session-days", type=int, default=7,
                        help="expire objects under sessions/ and connections/ after this many days (default 7)")
    parser.add_argument("--no-lifecycle", action="store_true", help="leave lifecycle rules alone")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except Misconfigured as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    storage = settings.storage
    if not (storage.r2_account_id or storage.endpoint_url):
        print("note: neither R2_ACCOUNT_ID nor S3_ENDPOINT_URL is set; using AWS S3 itself.", file=sys.stderr)
    client = build_s3_client(storage)
    where = storage.endpoint_url or "AWS S3"
    try:
        ensure_bucket(client, storage.bucket, storage.region, where)
        if args.cors_origin:
            ensure_cors(client, storage.bucket, args.cors_origin)
        if not args.no_lifecycle:
            ensure_lifecycle(client, storage.bucket, args.session_days)
    except (ClientError, BotoCoreError) as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1
    print(f"done: bucket {storage.bucket!r} at {where} is ready.")
    return 0


def ensure_bucket(client: Any, bucket: str, region: str, where: str) -> None:
    """Create the bucket unless it exists."""
    try:
        client.head_bucket(Bucket=bucket)
        print(f"bucket {bucket!r} already exists at {where}: left as it is.")
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    params: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    client.create_bucket(**params)
    print(f"bucket {bucket!r} created at {where} (region {region}).")


def ensure_cors(client: Any, bucket: str, origins: list[str]) -> None:
    """Allow browsers on `origins` to read and write objects directly."""
    wanted = {
        "CORSRules": [
            {
                "AllowedOrigins": sorted(origins),
                "AllowedMethods": ["GET", "PUT", "POST", "DELETE", "HEAD"],
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": 3600,
            }
        ]
    }
    try:
        current = client.get_bucket_cors(Bucket=bucket).get("CORSRules")
    except ClientError:
        current = None
    if current == wanted["CORSRules"]:
        print(f"CORS for {', '.join(sorted(origins))}: already set.")
        return
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration=wanted)
    print(f"CORS set: browser uploads allowed from {', '.join(sorted(origins))}.")


def ensure_lifecycle(client: Any, bucket: str, days: int) -> None:
    """Expire stale session objects; keep any other rules the bucket already has."""
    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchLifecycleConfiguration", "404"):
            raise
        rules = []
    ours = [
        {"ID": rule_id, "Filter": {"Prefix": prefix}, "Status": "Enabled", "Expiration": {"Days": days}}
        for rule_id, prefix in LIFECYCLE_RULES.items()
    ]
    others = [r for r in rules if r.get("ID") not in LIFECYCLE_RULES]
    existing = {r.get("ID"): r for r in rules if r.get("ID") in LIFECYCLE_RULES}
    if all(_same_rule(existing.get(r["ID"]), r) for r in ours):
        print(f"lifecycle: sessions/ and connections/ already expire after {days} days.")
        return
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": others + ours})
    print(f"lifecycle set: objects under sessions/ and connections/ expire after {days} days.")


def _same_rule(current: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    if current is None:
        return False
    prefix = (current.get("Filter") or {}).get("Prefix", current.get("Prefix"))
    return (
        prefix == wanted["Filter"]["Prefix"]
        and current.get("Status") == "Enabled"
        and (current.get("Expiration") or {}).get("Days") == wanted["Expiration"]["Days"]
    )


def describe(exc: Exception) -> str:
    """Turn the S3 errors people hit first into advice."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Unauthorized"):
            return (f"{code}: the credentials were refused. Check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY "
                    "and that the R2 API token may create buckets (Admin Read & Write).")
        if code == "NotImplemented":
            return ("NotImplemented: the service refused a request feature (on R2, usually a checksum "
                    "trailer). This script already disables them; upgrade boto3 >= 1.36.")
        return f"{code}: {exc.response.get('Error', {}).get('Message', exc)}"
    return f"cannot reach the storage endpoint: {exc}"


if __name__ == "__main__":
    sys.exit(main())
