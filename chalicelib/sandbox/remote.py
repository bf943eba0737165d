"""Sandboxes on a sandbox host, over HTTP (chosen when SANDBOX_URL is set).

The API's Lambdas cannot keep sessions alive, so they drive sandboxes on a host running
`sandbox_host` (see its Dockerfile). File contents travel base64-encoded in JSON.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx

from chalicelib.config import Settings
from chalicelib.ids import validate_id
from chalicelib.sandbox.base import (
    WORKSPACE,
    ExecResult,
    FileEntry,
    MountSpec,
    Placement,
    SandboxGone,
    SandboxOptions,
)
from chalicelib.sandbox.remote_archive import RemoteArchiveMixin
from chalicelib.sandbox.remote_http import host_request


class _Client:
    def __init__(self, settings: Settings) -> None:
        token = settings.sandbox.token.get_secret_value() if settings.sandbox.token else ""
        # Reads are quick; commands may run for their whole timeout, so the read timeout is long.
        self.http = httpx.Client(
            base_url=(settings.sandbox.url or "").rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(connect=5.0, read=settings.sandbox.command_timeout_seconds + 30.0, write=30.0, pool=10.0),
        )

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None) -> dict[str, Any]:
        return host_request(self.http, method, path, json=json, params=params).json()  # type: ignore[no-any-return]


class RemoteBashSession:
    def __init__(self, client: _Client, session_id: str) -> None:
        self.client = client
        self.base = f"/sessions/{session_id}/bash"

    def run(self, command: str, *, timeout: float | None = None, max_output: int = 30_000) -> ExecResult:
        return ExecResult(**self.client.call("POST", self.base, json={"command": command, "timeout": timeout, "maxOutput": max_output}))

    def restart(self) -> None:
        self.client.call("POST", self.base + "/restart")


class RemoteSandbox(RemoteArchiveMixin):
    """A session's sandbox on the sandbox host."""

    def __init__(self, client: _Client, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.base = f"/sessions/{session_id}"

    def write_file(self, path: str, content: bytes | str) -> None:
        self.write_files({path: content})

    def write_files(self, files: dict[str, bytes | str]) -> None:
        encoded = {p: base64.b64encode(c.encode() if isinstance(c, str) else c).decode() for p, c in files.items()}
        self.client.call("PUT", self.base + "/files", json={"files": encoded})

    def read_file(self, path: str) -> bytes:
        return base64.b64decode(self.client.call("GET", self.base + "/files", params={"path": path})["content"])

    def list_files(self, path: str = WORKSPACE, *, recursive: bool = True) -> list[FileEntry]:
        body = self.client.call("GET", self.base + "/list", params={"path": path, "recursive": "1" if recursive else "0"})
        return [FileEntry(**e) for e in body["entries"]]

    def delete_file(self, path: str) -> None:
        self.client.call("DELETE", self.base + "/files", params={"path": path})

    def exec(self, command: str, *, timeout: float | None = None, max_output: int = 100_000) -> ExecResult:
        return ExecResult(**self.client.call("POST", self.base + "/exec", json={"command": command, "timeout": timeout, "maxOutput": max_output}))

    def bash(self) -> RemoteBashSession:
        return RemoteBashSession(self.client, self.session_id)

    def mount_bucket(self, spec: MountSpec) -> list[str]:
        payload = spec.model_dump(mode="json")
        for secret in ("access_key_id", "secret_access_key", "session_token"):
            value = getattr(spec, secret)
            payload[secret] = value.get_secret_value() if value is not None else None
        return list(self.client.call("POST", self.base + "/mount", json={"spec": payload})["seen"])

    def destroy(self) -> None:
        self.client.call("DELETE", self.base)


class RemoteSandboxProvider:
    """Sandboxes on the host at SANDBOX_URL."""

    kind = "remote"

    def __init__(self, settings: Settings) -> None:
        self.client = _Client(settings)
        self._limits: dict[str, str] | None = None
        self._limits_failed_at = -1e9

    def limits(self) -> dict[str, str]:
        """The sandbox host's limits (its /health), asked once; unknown while it cannot be reached.

        /health is called often: after a failure the host is asked again a minute later at the
        earliest, so an unreachable host does not slow every /health down.
        """
        if self._limits is None:
            if time.monotonic() - self._limits_failed_at < 60:
                return {"status": "unknown: the sandbox host did not answer"}
            try:
                answer = self.client.http.get("/health", timeout=2.0).json()
                self._limits = {str(k): str(v) for k, v in dict(answer.get("limits") or {}).items()}
            except (httpx.HTTPError, ValueError, TypeError, AttributeError):
                self._limits_failed_at = time.monotonic()
                return {"status": "unknown: the sandbox host did not answer"}
        return self._limits

    def create(self, session_id: str, options: SandboxOptions, placement: Placement | None = None) -> RemoteSandbox:
        validate_id(session_id, "sessionId")
        self.client.call("POST", f"/sessions/{session_id}", json={"allowNetwork": options.allow_network,
                         "networkAllow": list(options.network_allow), "networkDeny": list(options.network_deny)})
        return RemoteSandbox(self.client, session_id)

    def get(self, session_id: str) -> RemoteSandbox:
        validate_id(session_id, "sessionId")
        self.client.call("GET", f"/sessions/{session_id}")
        return RemoteSandbox(self.client, session_id)

    def destroy(self, session_id: str) -> bool:
        validate_id(session_id, "sessionId")
        try:
            self.client.call("DELETE", f"/sessions/{session_id}")
        except SandboxGone:
            return False
        return True

    def supports_mount(self, spec: MountSpec) -> bool:
        payload = spec.model_dump(mode="json")
        return bool(self.client.call("POST", "/mount-support", json={"spec": payload})["supported"])
