"""The boto3 session the app sends and invokes with.

Chalice builds the management API endpoint as `https://{apiId}.execute-api.{region}.amazonaws.com/{stage}`
and the turn runner is started with `lambda.invoke`. Under the local gateway (LOCAL_GATEWAY_URL
is set) those clients are pointed at the gateway over plain HTTP, keeping the endpoint's path
(the stage), so exactly the same botocore calls run locally as in AWS. Each such call carries
the gateway's per-process secret (`trust_local_gateway`), which is how the gateway tells the
app's own calls from anyone else's on the same port.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import boto3

LOCAL_SERVICES = ("apigatewaymanagementapi", "lambda")
# Under the local gateway the region only names a fake endpoint, and a newcomer's machine has no
# AWS configuration at all; in Lambda, AWS_REGION is always set and this default is never used.
LOCAL_REGION = "us-east-1"

# The only botocore service models the Lambda package keeps (scripts/lambda_package.py drops the
# other ~440, two thirds of the zip). Creating a client for a service missing here fails in AWS
# with UnknownServiceError: add it first. tests/integration/test_packaging.py runs every client the
# app creates against the pruned package.
PACKAGED_SERVICES = (
    "s3",  # storage (R2)
    "lambda",  # starting the turn runner
    "apigatewaymanagementapi",  # sending websocket frames
    "ssm",  # secrets
    "secretsmanager",  # secrets
    # botocore's credential chain creates these when a role, SSO or `aws login` profile is configured.
    "sts",
    "sso",
    "sso-oidc",
    "signin",
)


class GatewayAwareSession(boto3.session.Session):
    """A boto3 Session whose management-API and Lambda clients reach the local gateway when
    LOCAL_GATEWAY_URL is set, and AWS otherwise."""

    @property
    def region_name(self) -> str | None:  # type: ignore[override]
        """The configured region; under the local gateway, LOCAL_REGION when none is configured
        (Chalice's websocket client refuses to send without one)."""
        configured: str | None = super().region_name
        if configured is None and os.environ.get("LOCAL_GATEWAY_URL"):
            return LOCAL_REGION
        return configured

    def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        gateway = os.environ.get("LOCAL_GATEWAY_URL")
        if gateway and service_name in LOCAL_SERVICES:
            path = urlsplit(kwargs.get("endpoint_url") or "").path
            kwargs["endpoint_url"] = gateway.rstrip("/") + path
            kwargs.setdefault("aws_access_key_id", "local")
            kwargs.setdefault("aws_secret_access_key", "local")
            kwargs.setdefault("region_name", self.region_name)
        return super().client(service_name, *args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for service in LOCAL_SERVICES:  # clients copy the session's handlers when they are made
            self.events.register(f"before-sign.{service}", _add_gateway_secret)


def aws_session() -> boto3.session.Session:
    """The session for the websocket API and the Lambda client."""
    return GatewayAwareSession()


LOCAL_GATEWAY_SECRET_HEADER = "X-Local-Gateway-Secret"

_local_gateway_secret: str | None = None


def trust_local_gateway(secret: str) -> None:
    """Called by the local gateway at start: this process's calls to it carry `secret`.

    Kept in memory only (not in the environment), so no child process (a sandbox, s3fs)
    inherits it.
    """
    global _local_gateway_secret
    _local_gateway_secret = secret


def _add_gateway_secret(request: Any, **_: Any) -> None:
    # Read at send time (a client built before the gateway started still proves itself), and
    # only toward the local gateway: nothing is added to calls that go to AWS.
    gateway = os.environ.get("LOCAL_GATEWAY_URL")
    if _local_gateway_secret is not None and gateway and request.url.startswith(gateway.rstrip("/") + "/"):
        request.headers[LOCAL_GATEWAY_SECRET_HEADER] = _local_gateway_secret
