"""Suite-wide fixtures: a clean, offline environment and the S3 stand-ins."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.s3 import moto_server

# Nothing in the suite may reach AWS: fake credentials and a region, set before any boto3 use.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
)
for _name in (
    "API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "R2_ACCOUNT_ID",
    "R2_BUCKET",
    "R2_ACCESS_KEY_ID",
    "R2_SECRET_ACCESS_KEY",
    "S3_ENDPOINT_URL",
    "STORAGE_BACKEND",
    "SANDBOX_URL",
    "SANDBOX_TOKEN",
    "DATA_DIR",
    "ENVIRONMENT",
    "AUTH_JWT_ISSUER",
    "AUTH_JWT_AUDIENCE",
    "AUTH_JWT_USER_CLAIM",
    "AUTH_JWKS_URL",
    "USER_TOKEN_SECRET",
):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto S3 server on loopback for the whole run (tests use their own buckets)."""
    with moto_server() as url:
        yield url
