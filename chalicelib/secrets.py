"""Secrets in AWS: read from SSM Parameter Store or Secrets Manager once per cold start.

`config.json` never holds a secret. A stage names where its secrets live:
    SECRETS_SOURCE=ssm:/claude-agent/prod          → SecureString parameters /claude-agent/prod/API_KEY, ...
    SECRETS_SOURCE=secretsmanager:claude-agent/prod → one secret whose JSON holds {"API_KEY": ...}
Outside Lambda SECRETS_SOURCE is ignored. The values are put into the process environment (where Settings reads everything), so the rest
of the code cannot tell a secret from a local environment variable. Locally, secrets come
from the environment or a git-ignored `.env` file instead, and SECRETS_SOURCE is unset.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import MutableMapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.aws import ClientSource, aws_session
from chalicelib.errors import Misconfigured

log = logging.getLogger(__name__)

REQUIRED = ("API_KEY", "ANTHROPIC_API_KEY", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY")
OPTIONAL = ("SANDBOX_TOKEN", "CLOUDFLARE_API_TOKEN")
RETRY_FAILED_AFTER = 60.0

_lock = threading.Lock()
_loaded_source: str | None = None
_failure: tuple[float, Misconfigured] | None = None


def ensure_loaded(environ: MutableMapping[str, str] | None = None, session: ClientSource | None = None) -> None:
    """Load the secrets named by SECRETS_SOURCE into `environ`, once; raise Misconfigured.

    A failure is remembered for a minute (so a missing parameter does not cost an SSM call
    per request) and then retried, so adding the parameter fixes a running deployment.
    """
    global _loaded_source, _failure
    env = os.environ if environ is None else environ
    source = env.get("SECRETS_SOURCE")
    # Only inside Lambda: the dev stage's config also drives `chalice local` and ./scripts/dev,
    # which take secrets from the environment or .env instead.
    if not source or source == _loaded_source or "AWS_LAMBDA_FUNCTION_NAME" not in env:
        return
    with _lock:
        if source == _loaded_source:
            return
        if _failure is not None and time.monotonic() - _failure[0] < RETRY_FAILED_AFTER:
            raise _failure[1]
        try:
            values = fetch(source, session or aws_session())
        except Misconfigured as exc:
            _failure = (time.monotonic(), exc)
            raise
        for name, value in values.items():
            # An explicit environment variable wins, so an operator can override one value.
            env.setdefault(name, value)
        _loaded_source, _failure = source, None
        log.info("loaded %d secrets from %s", len(values), source)


def fetch(source: str, session: ClientSource) -> dict[str, str]:
    """Every secret under `source` ('ssm:/path' or 'secretsmanager:name')."""
    kind, _, location = source.partition(":")
    if kind == "ssm" and location.startswith("/"):
        return _from_ssm(session.client("ssm"), location.rstrip("/"))
    if kind == "secretsmanager" and location:
        return _from_secrets_manager(session.client("secretsmanager"), location)
    raise Misconfigured(
        f"SECRETS_SOURCE={source!r} is not valid: use 'ssm:/claude-agent/<stage>' or "
        "'secretsmanager:<secret name>'.",
        code="secrets_source_invalid",
    )


def _from_ssm(client: Any, path: str) -> dict[str, str]:
    names = [f"{path}/{name}" for name in REQUIRED + OPTIONAL]
    try:
        response = client.get_parameters(Names=names, WithDecryption=True)
    except (ClientError, BotoCoreError) as exc:
        raise Misconfigured(
            f"Cannot read the secrets under SSM path {path}: {exc}. Check the function's IAM policy "
            "(ssm:GetParameters and kms:Decrypt on that path).",
            code="secrets_unreadable",
        ) from exc
    found = {p["Name"].rsplit("/", 1)[1]: p["Value"] for p in response.get("Parameters", [])}
    missing = [f"{path}/{name}" for name in REQUIRED if name not in found]
    if missing:
        raise Misconfigured(
            f"SSM parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} missing: create {'them' if len(missing) > 1 else 'it'} "
            "with ./scripts/put-secrets (SecureString).",
            code="secret_missing",
        )
    return found


def _from_secrets_manager(client: Any, secret_id: str) -> dict[str, str]:
    try:
        raw = client.get_secret_value(SecretId=secret_id)["SecretString"]
    except (ClientError, BotoCoreError) as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise Misconfigured(
                f"Secrets Manager secret {secret_id!r} does not exist: create it with ./scripts/put-secrets.",
                code="secret_missing",
            ) from exc
        raise Misconfigured(
            f"Cannot read Secrets Manager secret {secret_id!r}: {exc}. Check secretsmanager:GetSecretValue "
            "in the function's IAM policy.",
            code="secrets_unreadable",
        ) from exc
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise Misconfigured(f"Secret {secret_id!r} must be a JSON object of NAME: value pairs.", code="secret_invalid")
    missing = [name for name in REQUIRED if not data.get(name)]
    if missing:
        raise Misconfigured(
            f"Secret {secret_id!r} lacks {', '.join(missing)}: add {'them' if len(missing) > 1 else 'it'} "
            "with ./scripts/put-secrets.",
            code="secret_missing",
        )
    return {k: str(v) for k, v in data.items() if k in REQUIRED + OPTIONAL}


def reset_for_tests() -> None:
    """Forget what was loaded (tests load different sources in one process)."""
    global _loaded_source, _failure
    with _lock:
        _loaded_source, _failure = None, None
