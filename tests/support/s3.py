"""S3 stand-ins for tests: moto in-process, and moto's ThreadedMotoServer on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

from chalicelib.config import StorageSettings
from chalicelib.storage.s3 import build_s3_client

FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@contextmanager
def moto_server() -> Iterator[str]:
    """A real S3 HTTP server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def storage_settings(endpoint_url: str | None, bucket: str, region: str = "auto") -> StorageSettings:
    """StorageSettings for an S3 endpoint with the fake credentials."""
    return StorageSettings(
        backend="s3",
        bucket=bucket,
        endpoint_url=endpoint_url,
        region=region,
        access_key_id="testing",  # type: ignore[arg-type]
        secret_access_key="testing",  # type: ignore[arg-type]
    )


def create_bucket(settings: StorageSettings) -> Any:
    """Create the bucket (region `auto` needs a LocationConstraint) and return the client."""
    client = build_s3_client(settings, boto3.session.Session())
    if settings.region == "us-east-1":
        client.create_bucket(Bucket=settings.bucket)
    else:
        client.create_bucket(
            Bucket=settings.bucket, CreateBucketConfiguration={"LocationConstraint": settings.region}
        )
    return client
