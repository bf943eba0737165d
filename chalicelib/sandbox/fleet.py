"""A fleet of sandbox hosts: SANDBOX_URL lists them, comma-separated, or names the Cloud Map
service they register in (`cloudmap://<namespace>/<service>`, see `discovery`).

Placement: a new session goes to the answering, non-draining host with the fewest sessions
(each host reports `sessions` and `draining` on /health). The chosen host is recorded with the
session (the caller stores `sandbox.host` in the session record and hands a resolver back), and
every later call goes there. When that host does not answer, or drains, `get` says the sandbox
is gone, so the caller makes it again: `create` then places it on another host, where the
caller restores the workspace from its snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from chalicelib.config import Settings
from chalicelib.ids import validate_id
from chalicelib.sandbox.base import MountSpec, Placement, SandboxGone, SandboxOptions, SandboxUnavailable
from chalicelib.sandbox.discovery import HostDirectory, build_host_directory
from chalicelib.sandbox.remote import RemoteSandbox, RemoteSandboxProvider

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0

HostResolver = Callable[[str], "str | None"]


@dataclass(frozen=True)
class HostHealth:
    """What one host said on /health (or why it said nothing)."""

    url: str
    up: bool
    sessions: int = 0
    draining: bool = False
    problem: str | None = None
    # What the host directory says (Cloud Map's health status; a fixed list says yes).
    listed_healthy: bool = True

    @property
    def takes_sessions(self) -> bool:
        return self.up and not self.draining and self.listed_healthy


class FleetSandboxProvider:
    """Sandboxes spread over the sandbox hosts of SANDBOX_URL."""

    kind = "remote"

    def __init__(self, settings: Settings, resolve_host: HostResolver | None = None,
                 directory: HostDirectory | None = None) -> None:
        self.settings = settings
        self.directory = directory or build_host_directory(settings.sandbox)
        self._providers: dict[str, RemoteSandboxProvider] = {}
        self.resolve_host = resolve_host
        # This process's view of where sessions are; the session record is the truth.
        self._placed: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def hosts(self) -> dict[str, RemoteSandboxProvider]:
        """The hosts the directory lists now (Cloud Map's answer is cached for up to 10 s)."""
        return {url: self._provider(url) for url in self.directory.hosts()}

    def _provider(self, url: str) -> RemoteSandboxProvider:
        with self._lock:
            provider = self._providers.get(url)
            if provider is None:
                sandbox = self.settings.sandbox.model_copy(update={"url": url})
                provider = self._providers[url] = RemoteSandboxProvider(self.settings.model_copy(update={"sandbox": sandbox}))
            return provider

    # -- health and placement ------------------------------------------------------------

    def health(self) -> list[HostHealth]:
        """Every host's /health, asked in parallel with a short timeout, with the directory's opinion."""
        listed = self.directory.hosts()
        if not listed:
            return []
        with ThreadPoolExecutor(max_workers=len(listed)) as pool:
            probed = list(pool.map(_probe, listed))
        return [h if listed[h.url] else HostHealth(h.url, up=h.up, sessions=h.sessions, draining=h.draining,
                                                   problem=h.problem or "unhealthy in Cloud Map", listed_healthy=False)
                for h in probed]

    def place(self) -> str:
        """The host a new session should go to; SandboxUnavailable when none can take it."""
        report = self.health()
        if not report:
            raise SandboxUnavailable(f"No sandbox host is registered ({self.settings.sandbox.url}). Start a host.")
        ready = [h for h in report if h.takes_sessions]
        if not ready:
            detail = "; ".join(f"{h.url}: {h.problem or 'draining'}" for h in report)
            raise SandboxUnavailable(f"No sandbox host can take a session ({detail}). Start a host or end a drain.")
        order = [h.url for h in report]
        return min(ready, key=lambda h: (h.sessions, order.index(h.url))).url

    def host_of(self, session_id: str) -> str | None:
        """Where the session was placed, if that host is still listed: this process's memory, else
        the resolver (the session record)."""
        known = self._recorded(session_id)
        return known if known in self.directory.hosts() else None

    def _recorded(self, session_id: str, placement: Placement | None = None) -> str | None:
        with self._lock:
            known = self._placed.get(session_id)
        if known is None and placement is not None:
            return placement.host
        if known is None and self.resolve_host is not None:
            known = self.resolve_host(session_id)
        return known

    def _remember(self, session_id: str, host: str | None) -> None:
        with self._lock:
            if host is None:
                self._placed.pop(session_id, None)
            else:
                self._placed[session_id] = host

    # -- SandboxProvider -----------------------------------------------------------------

    def create(self, session_id: str, options: SandboxOptions, placement: Placement | None = None) -> RemoteSandbox:
        """Refresh the session on its host when that host is live and not draining; else place it anew.

        `placement` is the caller's record of it (setup has just read it): without one, the
        resolver reads the record."""
        validate_id(session_id, "sessionId")
        recorded = self._recorded(session_id, placement)
        current = recorded if recorded in self.directory.hosts() else None
        if current is not None:
            try:
                self._check(current, session_id)
                sandbox = self._provider(current).create(session_id, options)
                self._remember(session_id, current)
                return sandbox
            except SandboxGone:
                pass  # not there (reaped, host restarted, draining): place it below
        host = self.place()
        sandbox = self._provider(host).create(session_id, options)
        self._remember(session_id, host)
        # A host no longer listed (deregistered) may still run: end the old sandbox there too.
        if recorded is not None and recorded != host:
            self._forget_on(recorded, session_id)
        return sandbox

    def get(self, session_id: str) -> RemoteSandbox:
        """The live sandbox; SandboxGone when it is not on its host, or its host is down or draining."""
        validate_id(session_id, "sessionId")
        host = self.host_of(session_id)
        if host is None:
            raise SandboxGone(f"Session {session_id!r} has no sandbox host: call POST /setup/{session_id} again.")
        try:
            self._check(host, session_id)
        except SandboxGone:
            self._remember(session_id, None)
            recorded = self.resolve_host(session_id) if self.resolve_host is not None else None
            if recorded is None or recorded == host or recorded not in self.directory.hosts():
                raise
            # Another process moved it: follow the record.
            self._check(recorded, session_id)
            host = recorded
        self._remember(session_id, host)
        return RemoteSandbox(self._provider(host).client, session_id)

    def destroy(self, session_id: str) -> bool:
        validate_id(session_id, "sessionId")
        host = self.host_of(session_id)
        self._remember(session_id, None)
        if host is None:
            return False
        try:
            return self._provider(host).destroy(session_id)
        except SandboxUnavailable:
            if len(self.directory.hosts()) > 1:
                return False  # its host is gone, and the sandbox with it
            raise

    def supports_mount(self, spec: MountSpec) -> bool:
        """The fleet runs one image, so the first host that answers speaks for all."""
        last: SandboxUnavailable | None = None
        for provider in self.hosts.values():
            try:
                return provider.supports_mount(spec)
            except SandboxUnavailable as exc:
                last = exc
        raise last or SandboxUnavailable("No sandbox host answers.")

    def limits(self) -> dict[str, str]:
        """The fleet runs one image, so the first host that answers speaks for all."""
        for provider in self.hosts.values():
            found = provider.limits()
            if "status" not in found:
                return found
        return {"status": "unknown: no sandbox host answered"}

    # -- internals -----------------------------------------------------------------------

    def _check(self, host: str, session_id: str) -> None:
        """Raise SandboxGone unless the session is live on `host` and the host is not draining."""
        movable = len(self.directory.hosts()) > 1
        try:
            body = self._provider(host).client.call("GET", f"/sessions/{session_id}")
        except SandboxUnavailable as exc:
            if not movable:
                raise  # nowhere to move it: the caller should retry
            raise SandboxGone(f"The sandbox host {host} does not answer ({exc}); the session moves to another host.") from exc
        if body.get("draining") and movable:
            self._forget_on(host, session_id)
            raise SandboxGone(f"The sandbox host {host} is draining; the session moves to another host.")

    def _forget_on(self, host: str, session_id: str) -> None:
        """Best effort: end the session's old sandbox so a stale router cannot reach it."""
        try:
            self._provider(host).destroy(session_id)
        except Exception as exc:  # noqa: BLE001 - the old host may be down; nothing else to do
            log.info("could not end session %s on %s: %s", session_id, host, exc)


def _probe(url: str) -> HostHealth:
    try:
        response = httpx.get(url + "/health", timeout=HEALTH_TIMEOUT)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return HostHealth(url, up=False, problem=f"no answer ({type(exc).__name__})")
    if response.status_code != 200 or body.get("status") != "healthy":
        return HostHealth(url, up=False, problem=f"unhealthy (HTTP {response.status_code})")
    return HostHealth(url, up=True, sessions=int(body.get("sessions", 0)), draining=bool(body.get("draining", False)))
