"""AWS sessions: the real one in Lambda, or one whose clients reach the local gateway.

Chalice builds the management API endpoint as `https://{apiId}.execute-api.{region}.amazonaws.com/{stage}`
and the turn runner is started with `lambda.invoke`. Under the local gateway
(LOCAL_GATEWAY_URL is set) those clients are pointed at the gateway over plain HTTP, keeping the
endpoint's path (the stage), so the same botocore calls run as in production.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import boto3

LOCAL_SERVICES = ("apigatewaymanagementapi", "lambda")


class LocalGatewaySession(boto3.session.Session):
    """A boto3 Session whose management-API and Lambda clients talk to the local gateway."""

    def __init__(self, gateway_url: str, **kwargs: Any) -> None:
        kwargs.setdefault("aws_access_key_id", "local")
        kwargs.setdefault("aws_secret_access_key", "local")
        kwargs.setdefault("region_name", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        super().__init__(**kwargs)
        self.gateway_url = gateway_url.rstrip("/")

    def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if service_name in LOCAL_SERVICES:
            path = urlsplit(kwargs.get("endpoint_url") or "").path
            kwargs["endpoint_url"] = self.gateway_url + path
        return super().client(service_name, *args, **kwargs)


def aws_session() -> boto3.session.Session:
    """The session the app sends and invokes with: local under the gateway, AWS otherwise."""
    url = os.environ.get("LOCAL_GATEWAY_URL")
    return LocalGatewaySession(url) if url else boto3.session.Session()
