"""AWS clients for the app, built on botocore alone.

boto3's Session is a thin layer over botocore's; what it adds (resources, s3transfer's managed
transfers) this app never uses, and importing it (s3transfer, multiprocessing, concurrent.futures)
cost every cold start about 25 ms of CPU. `AwsSession` is the part of a boto3 Session the app and
Chalice's websocket API call: `client(...)` with the same arguments and `region_name`.

Chalice builds the management API endpoint as `https://{apiId}.execute-api.{region}.amazonaws.com/{stage}`
and the turn runner is started with `lambda.invoke`. Under the local gateway (LOCAL_GATEWAY_URL
is set) those clients are pointed at the gateway over plain HTTP, keeping the endpoint's path
(the stage), so exactly the same botocore calls run locally as in AWS. Each such call carries
the gateway's per-process secret (`trust_local_gateway`), which is how the gateway tells the
app's own calls from anyone else's on the same port.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from botocore.session import Session as BotocoreSession
from botocore.utils import parse_timestamp as botocore_parse_timestamp

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
    "servicediscovery",  # SANDBOX_URL=cloudmap://...: Cloud Map's DiscoverInstances
    # botocore's credential chain creates these when a role, SSO or `aws login` profile is configured.
    "sts",
    "sso",
    "sso-oidc",
    "signin",
)


class ClientSource(Protocol):
    """What builds AWS clients: an AwsSession, or a boto3 Session in tests and scripts."""

    def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any: ...


_loader_lock = threading.Lock()
_loader: Any = None


def _shared_loader(session: BotocoreSession) -> Any:
    """botocore's data loader, one per process.

    A loader caches the JSON it parsed (service models, endpoint rules, partitions); every new
    botocore session would otherwise parse S3's again (about 20 ms of CPU per client with
    botocore's full data, a few ms with the Lambda package's slimmed data). The files
    it reads are fixed by the installed botocore, so sharing them cannot leak configuration.
    """
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
        return _loader


def parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parsing, with ISO 8601 (every listed object's LastModified) parsed by
    the standard library: dateutil took 160 ms of CPU to parse the dates of a 1,000-key listing."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    result: datetime = botocore_parse_timestamp(value)
    return result


class AwsSession:
    """The part of a boto3 Session this app uses, on botocore: `client()` and `region_name`.

    Credentials and region come from the environment when the session is first used, as with
    boto3. Management-API and Lambda clients reach the local gateway when LOCAL_GATEWAY_URL is set,
    and AWS otherwise. Safe to share between threads (client creation is serialised: a botocore
    session's lazily built parts are not thread-safe).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: BotocoreSession | None = None

    def _botocore(self) -> BotocoreSession:
        with self._lock:
            if self._session is None:
                session = BotocoreSession()
                session.register_component("data_loader", _shared_loader(session))
                session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
                self._session = session
            return self._session

    @property
    def region_name(self) -> str | None:
        """The configured region; under the local gateway, LOCAL_REGION when none is configured
        (Chalice's websocket client refuses to send without one)."""
        configured: str | None = self._botocore().get_config_variable("region")
        if configured is None and os.environ.get("LOCAL_GATEWAY_URL"):
            return LOCAL_REGION
        return configured

    def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any:
        """A botocore client, with boto3's `Session.client` arguments."""
        gateway = os.environ.get("LOCAL_GATEWAY_URL")
        if gateway and service_name in LOCAL_SERVICES:
            path = urlsplit(kwargs.get("endpoint_url") or "").path
            kwargs["endpoint_url"] = gateway.rstrip("/") + path
            kwargs.setdefault("aws_access_key_id", "local")
            kwargs.setdefault("aws_secret_access_key", "local")
            kwargs.setdefault("region_name", self.region_name)
        session = self._botocore()
        with self._lock:
            client = session.create_client(service_name, *args, **kwargs)
        if service_name in LOCAL_SERVICES:
            client.meta.events.register(f"before-sign.{service_name}", _add_gateway_secret)
        return client


def aws_session() -> AwsSession:
    """A session for the websocket API, the Lambda client and storage (credentials and region
    read from the environment at its first use)."""
    return AwsSession()


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
