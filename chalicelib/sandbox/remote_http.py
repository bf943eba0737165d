"""One request to a sandbox host, its failures raised as the sandbox errors the host named.

Shared by the file protocol (`remote`) and the archive routes (`remote_archive`): the host maps
every error to one `code` the same way on all its routes, so one table reads them back.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from chalicelib.sandbox.base import (
    MountError,
    SandboxError,
    SandboxFileNotFound,
    SandboxGone,
    SandboxIsADirectory,
    SandboxPathError,
    SandboxUnavailable,
    SnapshotTooLarge,
)
from chalicelib.sandbox.snapshot_format import SnapshotDamaged
from chalicelib.telemetry import tracing

_ERRORS: dict[str, type[SandboxError]] = {
    "sandbox_gone": SandboxGone,
    "file_not_found": SandboxFileNotFound,
    "invalid_path": SandboxPathError,
    "is_a_directory": SandboxIsADirectory,
    "mount_failed": MountError,
    "snapshot_too_large": SnapshotTooLarge,
    "snapshot_damaged": SnapshotDamaged,
    "snapshot_not_restorable": SandboxError,
}

_SESSION_PATH = re.compile(r"^/sessions/[^/]+")


def host_request(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Send one request to the sandbox host and return its (< 400) response.

    Raises SandboxUnavailable when the host cannot be reached, refuses the token or fails (5xx),
    and the SandboxError its `code` names for any other error answer.
    """
    route = _SESSION_PATH.sub("/sessions/{sessionId}", path)
    with tracing.span(f"sandbox {method} {route}", {"http.request.method": method, "url.template": route,
                                                     "server.address": http.base_url.host}, kind="client") as span:
        # The host continues this trace: its span of the operation is this one's child.
        headers = {**kwargs.pop("headers", {}), **tracing.headers()}
        try:
            response = http.request(method, path, headers=headers or None, **kwargs)
        except httpx.HTTPError as exc:
            span.fail("sandbox_unreachable")
            raise SandboxUnavailable(f"The sandbox host {http.base_url} cannot be reached ({type(exc).__name__}).") from exc
        span.set({"http.response.status_code": response.status_code})
    if response.status_code < 400:
        return response
    try:
        body = response.json()
        message, code = str(body.get("error", "")), str(body.get("code", ""))
    except ValueError:
        message, code = response.text[:200], ""
    if response.status_code == 401:
        raise SandboxUnavailable(f"The sandbox host refused SANDBOX_TOKEN: {message}")
    raise _ERRORS.get(code, SandboxUnavailable if response.status_code >= 500 else SandboxError)(message)
