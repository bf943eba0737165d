"""Which sandbox hosts exist: a fixed list, or AWS Cloud Map.

`SANDBOX_URL=https://a:8080,https://b:8080` names the hosts once and for all.
`SANDBOX_URL=cloudmap://<namespace>/<service>` asks Cloud Map (`DiscoverInstances`) instead, so
ECS registering and deregistering tasks is all it takes for the fleet to grow or shrink. The
answer is kept for at most `DISCOVERY_TTL` seconds: a Lambda serving a burst asks Cloud Map once
per 10 s, and a new task gets sessions at most 10 s after ECS registers it.

Cloud Map's health (ECS health checks, or custom health a task reports) is one of two opinions:
the fleet also asks each host's /health, and places sessions only where both say yes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from chalicelib.config import SandboxSettings
from chalicelib.sandbox.base import SandboxUnavailable

log = logging.getLogger(__name__)

SCHEME = "cloudmap://"
DISCOVERY_TTL = 10.0
# A host registers its address in the standard attributes ECS writes; `SANDBOX_HOST_URL` (a custom
# attribute) overrides them, for a host behind TLS or a name rather than an address.
URL_ATTRIBUTE = "SANDBOX_HOST_URL"
DEFAULT_PORT = "8080"


class HostDirectory(Protocol):
    """Where the fleet learns its hosts."""

    def hosts(self) -> dict[str, bool]:
        """Every known host's base URL, and whether the directory itself calls it healthy."""
        ...


class StaticHosts:
    """The hosts SANDBOX_URL lists, comma-separated; the list is the whole truth."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        self._hosts = {u.rstrip("/"): True for u in urls}
        if not self._hosts:
            raise SandboxUnavailable("SANDBOX_URL lists no sandbox host.")

    def hosts(self) -> dict[str, bool]:
        return dict(self._hosts)


@dataclass(frozen=True)
class CloudMapService:
    """`cloudmap://<namespace>/<service>`, parsed."""

    namespace: str
    service: str

    @classmethod
    def parse(cls, url: str) -> CloudMapService:
        parts = urlsplit(url)
        service = parts.path.strip("/")
        if not url.startswith(SCHEME) or not parts.netloc or not service or "/" in service or parts.query:
            raise SandboxUnavailable(f"SANDBOX_URL={url!r} is not cloudmap://<namespace>/<service> "
                                     "(e.g. cloudmap://sandbox.internal/sandbox-hosts).")
        return cls(parts.netloc, service)


def is_cloud_map(url: str | None) -> bool:
    """Whether SANDBOX_URL names a Cloud Map service rather than hosts."""
    return url is not None and url.strip().startswith(SCHEME)


class CloudMapHosts:
    """The instances Cloud Map lists for one service, cached for at most `ttl` seconds.

    When Cloud Map cannot be asked, the last answer stands (a Cloud Map hiccup must not stop
    sessions on hosts that are running) and the failure is logged; with no answer yet, it is a
    SandboxUnavailable naming the service.
    """

    def __init__(self, service: CloudMapService, client: Callable[[], Any], *, ttl: float = DISCOVERY_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self._client_factory = client
        self._client: Any = None
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, bool] | None = None
        self._fetched_at = 0.0

    def hosts(self) -> dict[str, bool]:
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._fetched_at < self.ttl:
                return dict(self._cached)
            try:
                found = self._discover()
            except Exception as exc:  # noqa: BLE001 - botocore's errors are many; each is reported the same way
                where = f"cloudmap://{self.service.namespace}/{self.service.service}"
                if self._cached is None:
                    raise SandboxUnavailable(f"Cloud Map cannot list the sandbox hosts of {where} "
                                             f"({type(exc).__name__}: {exc}).") from exc
                log.warning("Cloud Map DiscoverInstances failed for %s (%s); keeping the last answer", where, exc)
                return dict(self._cached)
            self._cached, self._fetched_at = found, now
            return dict(found)

    def _discover(self) -> dict[str, bool]:
        if self._client is None:
            self._client = self._client_factory()
        # ALL, not HEALTHY: a host Cloud Map calls unhealthy still serves the sessions it has (its
        # own /health decides that); it only gets no new ones.
        answer = self._client.discover_instances(NamespaceName=self.service.namespace, ServiceName=self.service.service,
                                                 HealthStatus="ALL", MaxResults=1000)
        found: dict[str, bool] = {}
        for instance in answer.get("Instances", []):
            url = instance_url(instance.get("Attributes", {}))
            if url is None:
                log.warning("Cloud Map instance %s has no address attribute; skipped", instance.get("InstanceId"))
                continue
            found[url] = instance.get("HealthStatus", "UNKNOWN") != "UNHEALTHY"
        return found


def instance_url(attributes: dict[str, str]) -> str | None:
    """A Cloud Map instance's base URL: its SANDBOX_HOST_URL attribute, else http://IPv4:port."""
    if attributes.get(URL_ATTRIBUTE):
        return attributes[URL_ATTRIBUTE].rstrip("/")
    address = attributes.get("AWS_INSTANCE_IPV4")
    if not address:
        return None
    return f"http://{address}:{attributes.get('AWS_INSTANCE_PORT') or DEFAULT_PORT}"


def build_host_directory(settings: SandboxSettings, client: Callable[[], Any] | None = None) -> HostDirectory:
    """The directory SANDBOX_URL names. `client` builds the servicediscovery client (default:
    the app's AWS session, see `cloud_map_client`)."""
    if is_cloud_map(settings.url):
        return CloudMapHosts(CloudMapService.parse(str(settings.url).strip()), client or cloud_map_client)
    return StaticHosts(settings.urls)


def cloud_map_client() -> Any:
    """A servicediscovery client from the app's AWS session.

    DiscoverInstances is served from the `data-` host prefix of the Cloud Map endpoint. Against a
    configured endpoint (AWS_ENDPOINT_URL_SERVICEDISCOVERY or AWS_ENDPOINT_URL: a VPC endpoint,
    moto) that prefix would turn `http://127.0.0.1:port` into the unresolvable `data-127.0.0.1`,
    so it is left off there, and only there.
    """
    import os

    from botocore.config import Config

    from chalicelib.aws import aws_session

    custom = os.environ.get("AWS_ENDPOINT_URL_SERVICEDISCOVERY") or os.environ.get("AWS_ENDPOINT_URL")
    # Short timeouts: a slow Cloud Map costs setup a few seconds at most, then the last answer stands.
    config = Config(connect_timeout=2, read_timeout=3, retries={"max_attempts": 2}, inject_host_prefix=not custom)
    return aws_session().client("servicediscovery", config=config)
