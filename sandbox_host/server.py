"""The sandbox host service.

Lambda cannot keep a process alive between invocations, so sessions live here: one
bubblewrap sandbox per session, driven over HTTP by `chalicelib.sandbox.remote`. Every route
but /health needs `Authorization: Bearer $SANDBOX_TOKEN`; sessions idle for longer than
SANDBOX_IDLE_TIMEOUT seconds (default 600) are destroyed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chalicelib.config import Settings
from chalicelib.errors import AppError, BadRequest
from chalicelib.sandbox.base import (
    IsolationUnavailable,
    MountError,
    MountSpec,
    SandboxError,
    SandboxFileNotFound,
    SandboxGone,
    SandboxIsADirectory,
    SandboxOptions,
    SandboxPathError,
    SnapshotTooLarge,
)
from chalicelib.sandbox.bwrap import LocalSandbox, LocalSandboxProvider
from chalicelib.sandbox.egress_policy import MAX_RULES, normalize_rule
from chalicelib.sandbox.snapshot_format import SnapshotDamaged, decode_frames, encode_frames
from chalicelib.security import bearer_token
from chalicelib.telemetry import tracing
from sandbox_host.operations import Operations, OperationsSettings

log = logging.getLogger("sandbox_host")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CreateBody(_Body):
    allow_network: bool = Field(default=False, alias="allowNetwork")
    network_allow: list[str] = Field(default_factory=list, alias="networkAllow", max_length=MAX_RULES)
    network_deny: list[str] = Field(default_factory=list, alias="networkDeny", max_length=MAX_RULES)

    @field_validator("network_allow", "network_deny")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        return [normalize_rule(rule) for rule in rules]

    def options(self) -> SandboxOptions:
        return SandboxOptions(allow_network=self.allow_network, network_allow=tuple(self.network_allow),
                              network_deny=tuple(self.network_deny))


class FilesBody(_Body):
    files: dict[str, str]  # sandbox path → base64 content


class CommandBody(_Body):
    command: str
    timeout: float | None = Field(default=None, gt=0, le=3600)
    max_output: int = Field(default=100_000, alias="maxOutput", ge=1, le=10_000_000)


class MountBody(_Body):
    spec: MountSpec


class DrainAndArchive:
    """Request shapes of the drain and archive routes."""

    class DrainBody(_Body):
        draining: bool = True

    @staticmethod
    def max_bytes(raw: str | None) -> int:
        # The API sends its WORKSPACE_SNAPSHOT_MB; the host never holds more than 5 GiB for it.
        try:
            value = int(raw or "")
        except ValueError:
            raise BadRequest("Query parameter maxBytes must be a whole number of bytes.", code="invalid_request") from None
        if not 1 <= value <= 5 * 2**30:
            raise BadRequest("Query parameter maxBytes must be between 1 and 5 GiB.", code="invalid_request")
        return value


class _Json(JSONResponse):
    """JSON with every non-ASCII character escaped: a file name that is not UTF-8 travels as its
    surrogate escapes (`\\udcff`) and comes back as the same bytes, where UTF-8 output would fail."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, code: str) -> JSONResponse:
    return _Json({"error": message, "code": code}, status_code=status)


class _TooLarge(Exception):
    """A request body passed its cap; nothing past the cap was read."""


async def _read_capped(request: Request, cap: int) -> bytes:
    """The body, refused as soon as it passes `cap` (by its Content-Length before reading, or
    while reading one without): a large body never sits in the host's memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _TooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


class SandboxHost:
    """Sessions of this host, with their last use for the idle reaper."""

    def __init__(self, settings: Settings) -> None:
        if settings.sandbox.token is None:
            raise SystemExit("SANDBOX_TOKEN is not set: the sandbox host refuses to start without it.")
        self.settings = settings
        self.token = settings.sandbox.token.get_secret_value()
        try:
            self.provider = LocalSandboxProvider(settings)
        except IsolationUnavailable as exc:
            # A host that cannot isolate must not start: every session on it would fail.
            raise SystemExit(f"The sandbox host cannot start: {exc}") from None
        self.last_used: dict[str, float] = {}
        # Commands running per session: a session with one is busy (reported as BusySessions).
        self.running: Counter[str] = Counter()
        # Told whenever sessions come or go (task protection follows the count).
        self.on_sessions_changed: Callable[[], None] = lambda: None
        # A draining host takes no new sessions; the API moves its sessions at their next turn.
        self.draining = settings.sandbox.drain
        self.lock = threading.Lock()
        self._stop = threading.Event()

    def touch(self, session_id: str) -> None:
        with self.lock:
            self.last_used[session_id] = time.monotonic()

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Destroy sessions idle for longer than the idle timeout; return their ids."""
        now = time.monotonic() if now is None else now
        limit = self.settings.sandbox.idle_timeout_seconds
        with self.lock:
            idle = [sid for sid, used in self.last_used.items() if now - used > limit]
            for sid in idle:
                del self.last_used[sid]
        for sid in idle:
            self.provider.destroy(sid)
            log.info("reaped idle session %s", sid)
        if idle:
            self.on_sessions_changed()
        return idle

    def busy(self) -> int:
        """Sessions running a command now."""
        with self.lock:
            return sum(1 for count in self.running.values() if count > 0)

    def reaper(self, interval: float = 30.0) -> None:
        while not self._stop.wait(interval):
            try:
                self.reap_idle()
            except Exception:
                log.exception("reaping failed")

    @contextlib.contextmanager
    def command(self, session_id: str | None) -> Iterator[None]:
        """Count the session busy while a command of it runs (nothing for other calls)."""
        if session_id is None:
            yield
            return
        with self.lock:
            self.running[session_id] += 1
        try:
            yield
        finally:
            with self.lock:
                self.running[session_id] -= 1
                if self.running[session_id] <= 0:
                    del self.running[session_id]

    def stop(self) -> None:
        self._stop.set()
        for sid in self.provider.sessions():
            self.provider.destroy(sid)


def create_app(settings: Settings | None = None, *, reaper_interval: float = 30.0,
               operations: OperationsSettings | None = None, metrics_stream: TextIO | None = None) -> Starlette:
    """The sandbox host's ASGI app. `operations`: task protection and metrics (see
    `sandbox_host.operations`; default: none held, metrics every 60 s to `metrics_stream`/stdout)."""
    host = SandboxHost(settings or Settings.from_env())
    ops = Operations(operations or OperationsSettings(), sessions=lambda: len(host.provider.sessions()), busy=host.busy,
                     draining=lambda: host.draining, stream=metrics_stream)
    host.on_sessions_changed = ops.sessions_changed

    max_body = host.settings.sandbox.host_max_body_mb * 2**20

    def endpoint(handler: Callable[..., Any], needs_session: bool = True, *, runs_command: bool = False,
                 cap: Callable[[Request], int] | None = None) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            token = bearer_token(dict(request.headers))
            if token is None or not hmac.compare_digest(token.encode(), host.token.encode()):
                return _error(401, "Missing or invalid sandbox token: send 'Authorization: Bearer $SANDBOX_TOKEN'.", "unauthorized")
            try:
                limit = cap(request) if cap is not None else max_body
                raw = await _read_capped(request, limit)
            except AppError as exc:
                return _error(exc.status, exc.message, exc.code)
            except _TooLarge:
                return _error(413, f"The request body passes this route's cap of {limit} bytes "
                                   "(SANDBOX_HOST_MAX_BODY_MB; the archive route: its maxBytes).", "body_too_large")
            from starlette.concurrency import run_in_threadpool

            def call() -> Response:
                # Each operation is a span of the caller's trace (its traceparent header).
                route = getattr(request.scope.get("route"), "path", request.url.path)
                with tracing.continued(request.headers), tracing.span(
                        f"sandbox host {request.method} {route}", {"http.request.method": request.method, "http.route": route,
                                                                   "session.id": request.path_params.get("session_id")},
                        kind="server") as span:
                    response = answer()
                    span.set({"http.response.status_code": response.status_code})
                    if response.status_code >= 500:
                        span.fail(str(response.status_code))
                    return response

            def answer() -> Response:
                try:
                    sid = request.path_params.get("session_id")
                    sandbox = host.provider.get(sid) if needs_session and sid else None
                    if sid:
                        host.touch(sid)
                    with host.command(sid if runs_command else None):
                        result = handler(request, sandbox, raw)
                    return result if isinstance(result, Response) else _Json(result)
                except AppError as exc:
                    return _error(exc.status, exc.message, exc.code)
                except ValidationError as exc:
                    return _error(400, f"Invalid request: {exc.errors()[0]['msg']}.", "invalid_request")
                except SandboxGone as exc:
                    return _error(404, str(exc), "sandbox_gone")
                except SandboxFileNotFound as exc:
                    return _error(404, str(exc), "file_not_found")
                except SandboxIsADirectory as exc:
                    return _error(400, str(exc), "is_a_directory")
                except SandboxPathError as exc:
                    return _error(400, str(exc), "invalid_path")
                except MountError as exc:
                    return _error(422, str(exc), "mount_failed")
                except SnapshotTooLarge as exc:
                    return _error(413, str(exc), "snapshot_too_large")
                except SnapshotDamaged as exc:
                    return _error(422, str(exc), "snapshot_damaged")
                except IsolationUnavailable as exc:
                    return _error(503, str(exc), "isolation_unavailable")
                except SandboxError as exc:
                    return _error(500, str(exc), "sandbox_error")
                except (binascii.Error, UnicodeError) as exc:
                    return _error(400, f"Invalid request: {exc}.", "invalid_request")
                except ValueError as exc:
                    # os functions refuse a NUL byte in a path or a command with ValueError.
                    return _error(400, f"Invalid request: {exc}.", "invalid_request")
                except Exception:  # noqa: BLE001 - every answer is JSON, a fault included
                    log.exception("%s %s failed", request.method, request.url.path)
                    return _error(500, "The sandbox host failed on this request; see its log.", "internal_error")

            return await run_in_threadpool(call)

        return run

    def create(request: Request, _: Any, raw: bytes) -> dict[str, Any]:
        body = CreateBody.model_validate_json(raw or b"{}")
        sid = request.path_params["session_id"]
        host.provider.create(sid, body.options())
        host.touch(sid)
        host.on_sessions_changed()
        return {"sessionId": sid}

    def exists(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        return {"sessionId": sandbox.session_id, "draining": host.draining}

    def destroy(request: Request, _: Any, raw: bytes) -> dict[str, Any]:
        sid = request.path_params["session_id"]
        with host.lock:
            host.last_used.pop(sid, None)
        if not host.provider.destroy(sid):
            raise SandboxGone(f"No session {sid!r} on this host.")
        host.on_sessions_changed()
        return {"destroyed": True, "sessionId": sid}

    def write(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        body = FilesBody.model_validate_json(raw)
        sandbox.write_files({p: base64.b64decode(c, validate=True) for p, c in body.files.items()})
        return {"written": len(body.files)}

    def read(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        return {"content": base64.b64encode(sandbox.read_file(request.query_params.get("path", ""))).decode()}

    def remove(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        sandbox.delete_file(request.query_params.get("path", ""))
        return {"deleted": True}

    def listing(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        entries = sandbox.list_files(request.query_params.get("path", "/workspace"),
                                     recursive=request.query_params.get("recursive", "1") == "1")
        return {"entries": [asdict(e) for e in entries]}

    def run_exec(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        body = CommandBody.model_validate_json(raw)
        return asdict(sandbox.exec(body.command, timeout=body.timeout, max_output=body.max_output))

    def run_bash(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        body = CommandBody.model_validate_json(raw)
        return asdict(sandbox.bash().run(body.command, timeout=body.timeout, max_output=body.max_output))

    def restart_bash(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        sandbox.bash().restart()
        return {"restarted": True}

    def mount(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        body = MountBody.model_validate_json(raw)
        if body.spec.kind == "bind":
            # A bind names a host folder: with the token, a caller could mount /etc. Over the API
            # only the user's bucket prefix can be mounted (s3fs, read through scoped credentials).
            raise MountError("The sandbox host mounts no host folder (kind 'bind') over its API; mount the user's "
                             "storage with kind 's3', or load the skills as files.")
        return {"seen": sandbox.mount_bucket(body.spec)}

    def supports(request: Request, _: Any, raw: bytes) -> dict[str, Any]:
        spec = MountBody.model_validate_json(raw).spec
        return {"supported": spec.kind != "bind" and host.provider.supports_mount(spec)}

    async def health(request: Request) -> Response:
        return _Json({"status": "healthy", "kind": host.provider.kind, "sessions": len(host.provider.sessions()),
                             "limits": host.provider.limits(), "draining": host.draining})

    def max_bytes(request: Request) -> int:
        return DrainAndArchive.max_bytes(request.query_params.get("maxBytes"))

    def export_archive(request: Request, sandbox: LocalSandbox, raw: bytes) -> Response:
        data = sandbox.export_workspace(max_bytes(request), request.query_params.get("unlessMd5") or None)
        return Response(status_code=204) if data is None else Response(data, media_type="application/gzip")

    def import_archive(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        return {"files": sandbox.import_workspace(raw, max_bytes(request))}

    def snapshot_unchanged(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        return {"unchanged": sandbox.snapshot_unchanged()}

    def snapshot_delta(request: Request, sandbox: LocalSandbox, raw: bytes) -> Response:
        delta = sandbox.snapshot_delta(max_bytes(request), request.query_params.get("base") or None)
        if delta is None:
            return Response(status_code=204)
        return Response(encode_frames(delta.root, delta.objects, base=delta.base, obsolete=delta.obsolete,
                                      files=delta.files), media_type="application/octet-stream")

    def snapshot_import(request: Request, sandbox: LocalSandbox, raw: bytes) -> Response:
        sent = decode_frames(raw)
        try:
            return _Json({"files": sandbox.import_snapshot(sent.root, sent.objects, max_bytes(request))})
        except (SnapshotTooLarge, SnapshotDamaged, SandboxPathError, SandboxGone):
            raise
        except SandboxError as exc:
            # The snapshot does not fit this sandbox (its disk): the API sets it aside and goes on
            # with an empty workspace, where a 500 would make it retry a restore that cannot work.
            return _error(422, str(exc), "snapshot_not_restorable")

    def entries(request: Request, sandbox: LocalSandbox, raw: bytes) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in sandbox.workspace_entries()]}

    def drain(request: Request, _: Any, raw: bytes) -> dict[str, Any]:
        host.draining = DrainAndArchive.DrainBody.model_validate_json(raw or b"{}").draining
        log.warning("draining: %s", host.draining)
        return {"draining": host.draining, "sessions": len(host.provider.sessions())}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        thread = threading.Thread(target=host.reaper, args=(reaper_interval,), daemon=True, name="reaper")
        thread.start()
        threading.Thread(target=ops.run, daemon=True, name="operations").start()
        yield
        host.stop()
        ops.stop()

    s = "/sessions/{session_id}"
    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/mount-support", endpoint(supports, needs_session=False), methods=["POST"]),
            Route(s, endpoint(create, needs_session=False), methods=["POST"]),
            Route(s, endpoint(exists), methods=["GET"]),
            Route(s, endpoint(destroy, needs_session=False), methods=["DELETE"]),
            Route(s + "/files", endpoint(write), methods=["PUT"]),
            Route(s + "/files", endpoint(read), methods=["GET"]),
            Route(s + "/files", endpoint(remove), methods=["DELETE"]),
            Route(s + "/list", endpoint(listing), methods=["GET"]),
            Route(s + "/exec", endpoint(run_exec, runs_command=True), methods=["POST"]),
            Route(s + "/bash", endpoint(run_bash, runs_command=True), methods=["POST"]),
            Route(s + "/bash/restart", endpoint(restart_bash), methods=["POST"]),
            Route(s + "/mount", endpoint(mount), methods=["POST"]),
            Route(s + "/archive", endpoint(export_archive), methods=["GET"]),
            Route(s + "/archive", endpoint(import_archive, cap=max_bytes), methods=["PUT"]),
            Route(s + "/entries", endpoint(entries), methods=["GET"]),
            Route(s + "/snapshot/unchanged", endpoint(snapshot_unchanged), methods=["GET"]),
            Route(s + "/snapshot", endpoint(snapshot_delta), methods=["POST"]),
            # The frames carry the objects (at most maxBytes) plus a header and the root.
            Route(s + "/snapshot", endpoint(snapshot_import, cap=lambda r: max_bytes(r) + 2**20), methods=["PUT"]),
            Route("/admin/drain", endpoint(drain, needs_session=False), methods=["POST"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _fault},
    )
    app.state.host = host
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (an unknown route, a wrong method) as JSON like every other."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.", code)


async def _fault(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %r", request.method, request.url.path, exc)
    return _error(500, "The sandbox host failed on this request; see its log.", "internal_error")


def main() -> None:
    """Run the host: SANDBOX_HOST_BIND (default 0.0.0.0) and PORT (default 8080)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tracing.name_service("claude-agent-sandbox-host")  # its spans' service.name unless OTEL_SERVICE_NAME says
    # How often the idle reaper looks; SANDBOX_IDLE_TIMEOUT says how idle is too idle.
    app = create_app(reaper_interval=float(os.environ.get("SANDBOX_REAP_INTERVAL", "30")),
                     operations=OperationsSettings.from_env(os.environ))
    # `docker stop` sends SIGTERM; uvicorn stops gracefully, then raises it again with the handler
    # it found. The default one would end the process on the spot, skipping exit handlers, and
    # every session's tmpfs workspace and uid record would outlive it: make it an ordinary exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    uvicorn.run(app, host=os.environ.get("SANDBOX_HOST_BIND", "0.0.0.0"), port=int(os.environ.get("PORT", "8080")))
