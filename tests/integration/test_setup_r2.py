"""scripts/setup-r2.sh against a real S3 server (moto) on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_setup(endpoint: str, bucket: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "S3_ENDPOINT_URL": endpoint,
        "R2_BUCKET": bucket,
        "R2_ACCESS_KEY_ID": "testing",
        "R2_SECRET_ACCESS_KEY": "testing",
        "S3_REGION": "auto",
    }
    return subprocess.run(
        [sys.executable, "-m", "scripts.setup_r2", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def s3(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, region_name="auto")


def test_creates_the_bucket_then_leaves_it_alone(moto_endpoint: str) -> None:
    bucket = f"setup-{uuid.uuid4().hex[:10]}"
    first = run_setup(moto_endpoint, bucket)
    assert first.returncode == 0, first.stderr
    assert f"bucket {bucket!r} created" in first.stdout
    assert "lifecycle set" in first.stdout
    second = run_setup(moto_endpoint, bucket)
    assert second.returncode == 0, second.stderr
    assert "already exists" in second.stdout
    assert "already expire" in second.stdout
    assert bucket in [b["Name"] for b in s3(moto_endpoint).list_buckets()["Buckets"]]


def test_lifecycle_expires_sessions_and_keeps_other_rules(moto_endpoint: str) -> None:
    bucket = f"setup-{uuid.uuid4().hex[:10]}"
    assert run_setup(moto_endpoint, bucket).returncode == 0
    client = s3(moto_endpoint)
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": rules
            + [{"ID": "users-own", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled", "Expiration": {"Days": 1}}]
        },
    )
    result = run_setup(moto_endpoint, bucket, "--session-days", "3")
    assert result.returncode == 0, result.stderr
    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["expire-stale-sessions"]["Filter"]["Prefix"] == "sessions/"
    assert rules["expire-stale-sessions"]["Expiration"]["Days"] == 3
    assert rules["expire-stale-connections"]["Filter"]["Prefix"] == "connections/"
    assert "users-own" in rules  # someone else's rule survives
    assert not any(r["Filter"].get("Prefix", "").startswith("users/") for r in rules.values())


def test_cors_only_when_asked(moto_endpoint: str) -> None:
    bucket = f"setup-{uuid.uuid4().hex[:10]}"
    assert run_setup(moto_endpoint, bucket).returncode == 0
    client = s3(moto_endpoint)
    with pytest.raises(client.exceptions.ClientError):
        client.get_bucket_cors(Bucket=bucket)
    result = run_setup(moto_endpoint, bucket, "--cors-origin", "https://app.example.com")
    assert "CORS set" in result.stdout
    cors = client.get_bucket_cors(Bucket=bucket)["CORSRules"][0]
    assert cors["AllowedOrigins"] == ["https://app.example.com"]
    assert "PUT" in cors["AllowedMethods"]
    again = run_setup(moto_endpoint, bucket, "--cors-origin", "https://app.example.com")
    assert "already set" in again.stdout


def test_unreachable_endpoint_is_a_clear_error() -> None:
    result = run_setup("http://127.0.0.1:9", "nowhere")
    assert result.returncode == 1
    assert "cannot reach the storage endpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_shell_wrapper_runs_the_same_script(moto_endpoint: str) -> None:
    bucket = f"setup-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "S3_ENDPOINT_URL": moto_endpoint, "R2_BUCKET": bucket,
           "R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing", "S3_REGION": "auto"}
    result = subprocess.run(["bash", "scripts/setup-r2.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"bucket {bucket!r} created" in result.stdout
