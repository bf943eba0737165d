"""Store the deployment's secrets where the Lambdas read them (the `wrangler secret put` step).

    ./scripts/put-secrets --stage prod                    # SSM SecureString under /claude-agent/prod/
    ./scripts/put-secrets --stage prod --secretsmanager   # one Secrets Manager secret claude-agent/prod

Each value is taken from the environment variable of the same name when set, otherwise asked
for without echo. Values are never printed. Prints the SECRETS_SOURCE to set for the stage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.secrets import OPTIONAL, REQUIRED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=["dev", "prod"])
    parser.add_argument("--secretsmanager", action="store_true", help="use Secrets Manager instead of SSM")
    parser.add_argument("--prefix", default="claude-agent", help="name prefix (default claude-agent)")
    parser.add_argument("--endpoint-url", help=argparse.SUPPRESS)  # tests point this at moto
    parser.add_argument("--no-prompt", action="store_true", help="fail instead of asking for a missing value")
    args = parser.parse_args(argv)

    values: dict[str, str] = {}
    for name in REQUIRED + OPTIONAL:
        value = os.environ.get(name)
        if not value and not args.no_prompt and sys.stdin.isatty():
            value = getpass.getpass(f"{name}{' (optional, Enter to skip)' if name in OPTIONAL else ''}: ")
        if value:
            values[name] = value
        elif name in REQUIRED:
            print(f"error: {name} is required: export it or run interactively.", file=sys.stderr)
            return 2

    session = boto3.session.Session()
    kwargs = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    try:
        if args.secretsmanager:
            source = put_secrets_manager(session.client("secretsmanager", **kwargs), f"{args.prefix}/{args.stage}", values)
        else:
            source = put_ssm(session.client("ssm", **kwargs), f"/{args.prefix}/{args.stage}", values)
    except (ClientError, BotoCoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"stored {len(values)} secrets ({', '.join(sorted(values))}).")
    print(f'set "SECRETS_SOURCE": "{source}" in .chalice/config.json for stage {args.stage} (it already is by default).')
    return 0


def put_ssm(client, path: str, values: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    for name, value in values.items():
        client.put_parameter(Name=f"{path}/{name}", Value=value, Type="SecureString", Overwrite=True)
        print(f"put SSM SecureString {path}/{name}")
    return f"ssm:{path}"


def put_secrets_manager(client, secret_id: str, values: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    body = json.dumps(values)
    try:
        client.put_secret_value(SecretId=secret_id, SecretString=body)
        print(f"updated Secrets Manager secret {secret_id}")
    except client.exceptions.ResourceNotFoundException:
        client.create_secret(Name=secret_id, SecretString=body)
        print(f"created Secrets Manager secret {secret_id}")
    return f"secretsmanager:{secret_id}"


if __name__ == "__main__":
    sys.exit(main())
