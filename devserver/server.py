"""The local gateway's ASGI app: REST through Chalice, /ws like API Gateway, and the AWS
management and Lambda Invoke APIs the app calls back into."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chalice import Chalice
from chalice.config import Config
from chalice.local import (
    ForbiddenError,
    LambdaContext,
    LocalGateway,
    LocalGatewayException,
    NotAuthorizedError,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from chalicelib.aws import trust_local_gateway
from chalicelib.config import Settings, current_settings
from chalicelib.errors import AppError
from chalicelib.web.cors import origin_refused
from chalicelib.web.frame_rate import FLOOD_CLOSE_CODE, Verdict, limiter, refusal
from devserver import edge
from devserver.request_scope import make_request_scoped
from devserver.socketio_server import SocketIOConnection, SocketIOGateway

log = logging.getLogger("gateway")

REST_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "CONNECT"]
# Generated at start, held in memory: the app's own management and Invoke calls carry it.
PROCESS_SECRET = secrets.token_urlsafe(32)


@dataclass
class _Connection:
    websocket: WebSocket
    loop: asyncio.AbstractEventLoop
    source_ip: str
    user_agent: str
    connected_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    last_active_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    outbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)

    async def close(self) -> None:
        await self.websocket.close()


class LocalGatewayApp:
    """Everything API Gateway and Lambda do for the app, in one process."""

    def __init__(self, app: Chalice, config: Config, *, ws_stage: str = "api", static_dir: Path | None = None,
                 app_module: str = "app", frame_workers: int = 8, turn_workers: int | None = None) -> None:
        # Requests run concurrently here, unlike on Lambda: each must see only its own request.
        self.chalice_app = make_request_scoped(app)
        self.config = config
        self.ws_stage = ws_stage
        self.static_dir = static_dir.resolve() if static_dir and static_dir.is_dir() else None
        self.app_module = app_module
        self.rest = LocalGateway(app, config)
        self.secret = PROCESS_SECRET
        trust_local_gateway(self.secret)
        self.api_id = "local" + secrets.token_hex(3)
        self.connections: dict[str, _Connection | SocketIOConnection] = {}
        self.lock = threading.Lock()
        # Frames and turns on separate pools: a turn holds its worker for minutes, a frame for
        # milliseconds, so running turns can never starve frames (an interrupt must get through).
        self.background = ThreadPoolExecutor(max_workers=frame_workers, thread_name_prefix="ws-frame")
        self.turns = ThreadPoolExecutor(max_workers=turn_workers or Settings.from_env().local_turn_workers,
                                        thread_name_prefix="turn-runner")
        routes = [
            WebSocketRoute("/ws", self.websocket),
            Route("/{stage}/@connections/{connection_id:path}", self.management, methods=["POST", "GET", "DELETE"]),
            Route("/2015-03-31/functions/{name}/invocations", self.invoke, methods=["POST"]),
        ]
        if self.static_dir is not None:
            routes += [Route("/", self.index, methods=["GET"]), Route("/console/{path:path}", self.static, methods=["GET"])]

        # Every method goes to Chalice, which answers an unknown route or method as API Gateway does.
        routes.append(Route("/{path:path}", self.rest_request, methods=REST_METHODS))
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan,
                                   exception_handlers={HTTPException: self._http_error, edge.Refused: self._refused})
        # Starlette's path pattern stops at a newline (`%0A`): such paths go to Chalice too.
        self.starlette.router.default = self._unrouted
        # Socket.IO at /socket.io/ (the original's protocol), everything else as above.
        self.socketio = SocketIOGateway(self)
        self.asgi = self.socketio.asgi(self.starlette)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self.background.shutdown(wait=False, cancel_futures=True)
        self.turns.shutdown(wait=False, cancel_futures=True)

    # -- REST ------------------------------------------------------------------------------

    async def _unrouted(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                response = await self.rest_request(Request(scope, receive))
            except edge.Refused as refused:
                response = refused.response
            await response(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(
                edge.error(404, "The websocket is at /ws.", "route_not_found"))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return edge.error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path} (see README.md).",
                          "method_not_allowed" if exc.status_code == 405 else "route_not_found")

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, edge.Refused)
        return exc.response

    async def rest_request(self, request: Request) -> Response:
        edge.check_path(request.scope.get("raw_path", b"").decode("latin-1") or request.url.path)
        try:
            refused = origin_refused(current_settings(), request.headers)
        except AppError as exc:
            return edge.error(exc.status, exc.message, exc.code)
        if refused is not None:
            # A browser on another origin: refused before anything runs, preflight included
            # (a "simple" cross-origin POST needs no preflight and would otherwise run).
            return edge.error(403, refused, "origin_not_allowed")
        body = await edge.read_capped(request, edge.REST_MAX_BYTES)
        raw_path = request.scope.get("raw_path")
        # Keep percent-encoding as the client sent it, like `chalice local` does.
        path = (raw_path.decode("latin-1") if raw_path else request.url.path) + (
            f"?{request.url.query}" if request.url.query else "")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
        try:
            result = await run_in_threadpool(self.rest.handle_request, request.method, path, headers, body or None)
        except ForbiddenError as exc:
            if b"Missing Authentication Token" in (exc.body or b"") or b"Authorization header requires" in (exc.body or b""):
                return edge.error(404, f"No route matches {request.method} {request.url.path}: see the API reference in README.md.",
                                  "route_not_found")
            return edge.error(403, "Forbidden.", "forbidden")
        except NotAuthorizedError:
            return edge.error(401, "Not authorized.", "unauthorized")
        except LocalGatewayException as exc:
            return edge.error(502, str(exc) or "Gateway error.", "gateway_error")
        if result["statusCode"] == 405:
            # Chalice's own answer for a known path and an unknown method has another shape.
            refused = edge.error(405, f"{request.method} is not supported on {request.url.path}: see the API reference in README.md.",
                                 "method_not_allowed")
            allow = {k.lower(): v for k, v in (result.get("headers") or {}).items()}.get("allow")
            if allow:
                refused.headers["Allow"] = allow  # the app's list of the path's methods, as chalice.test.Client gives it
            return refused
        response_headers = dict(result.get("headers") or {})
        payload = result.get("body") or b""
        if result.get("isBase64Encoded"):
            payload = base64.b64decode(payload)
        elif isinstance(payload, str):
            payload = payload.encode()
        response = Response(content=payload, status_code=result["statusCode"], headers=response_headers)
        for key, values in (result.get("multiValueHeaders") or {}).items():
            for value in values:
                response.headers.append(key, value)
        return response

    # -- static files ----------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return RedirectResponse("/console/")

    async def static(self, request: Request) -> Response:
        assert self.static_dir is not None
        target = (self.static_dir / (request.path_params["path"] or "index.html")).resolve()
        if not str(target).startswith(str(self.static_dir) + os.sep) or not target.is_file():
            return JSONResponse({"error": "No such file.", "code": "not_found"}, status_code=404)
        return FileResponse(target)

    # -- WebSocket -------------------------------------------------------------------------

    def _handler(self, route_key: str) -> Callable[[dict[str, Any], Any], Any] | None:
        config = self.chalice_app.websocket_handlers.get(route_key)
        if config is None:
            return None
        return getattr(importlib.import_module(self.app_module), config.handler_string.rsplit(".", 1)[1])

    def _event(self, route_key: str, event_type: str, connection_id: str, ws: WebSocket, body: str | None = None) -> dict[str, Any]:
        headers = {k: v for k, v in ws.headers.items()}
        return {
            "requestContext": {
                "routeKey": route_key, "eventType": event_type, "connectionId": connection_id,
                "domainName": headers.get("host", "127.0.0.1"), "stage": self.ws_stage, "apiId": self.api_id,
                "requestId": uuid.uuid4().hex, "connectedAt": int(time.time() * 1000),
                "identity": {"sourceIp": ws.client.host if ws.client else "127.0.0.1", "userAgent": headers.get("user-agent", "")},
            },
            "queryStringParameters": dict(ws.query_params) or None,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "isBase64Encoded": False,
            "body": body,
        }

    def _context(self, name: str, timeout: int = 30) -> LambdaContext:
        return LambdaContext(function_name=name, memory_size=512, max_runtime_ms=timeout * 1000)

    async def websocket(self, ws: WebSocket) -> None:
        connect = self._handler("$connect")
        message = self._handler("$default")
        if message is None:
            await ws.close(code=1008)
            return
        connection_id = base64.b64encode(secrets.token_bytes(9)).decode()[:-1] + "="
        if connect is not None:
            result = await run_in_threadpool(connect, self._event("$connect", "CONNECT", connection_id, ws), self._context("websocket_connect"))
            status = int((result or {}).get("statusCode", 200))
            if status >= 300:
                body = (result or {}).get("body") or json.dumps({"error": "Connection refused.", "code": "refused"})
                await ws.send_denial_response(Response(content=body, status_code=status, media_type="application/json"))
                return
        await ws.accept()
        conn = _Connection(ws, asyncio.get_running_loop(), ws.client.host if ws.client else "127.0.0.1", ws.headers.get("user-agent", ""))
        with self.lock:
            self.connections[connection_id] = conn
        writer = asyncio.create_task(self._writer(conn))
        engineio = "EIO" in ws.query_params  # a Socket.IO client over API Gateway's framing
        try:
            while True:
                received = await ws.receive()
                if received["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(received.get("code", 1000))
                conn.last_active_at = datetime.now(timezone.utc)
                verdict = self._frame_rate(connection_id)
                if verdict is Verdict.CLOSE:
                    log.warning("websocket %s closed: it kept sending past WS_FRAMES_PER_SECOND", connection_id)
                    await conn.outbox.put(None)  # what is queued for it (the refusal) goes first
                    await writer
                    await ws.close(code=FLOOD_CLOSE_CODE, reason="frame_rate_exceeded")
                    break
                if verdict is Verdict.REFUSE_AND_TELL and not engineio:
                    # (An Engine.IO client would not parse a plain frame: its refusals are dropped,
                    # as the Lambda edge does.)
                    await conn.outbox.put(json.dumps(refusal(current_settings().ws_frames_per_second)))
                if verdict is not Verdict.ADMIT:
                    continue
                text = received.get("text")
                event = self._event("$default", "MESSAGE", connection_id, ws, text)
                # Checked here, before the frame takes a worker: the handler does not count it again.
                event["requestContext"]["frameRateChecked"] = True
                if text is None:  # a binary frame: API Gateway passes it on base64-encoded
                    event.update(body=base64.b64encode(received.get("bytes") or b"").decode(), isBase64Encoded=True)
                # Each frame is its own Lambda invocation; its return value is not sent (as in AWS).
                self.background.submit(self._run_logged, message, event, self._context("websocket_message"))
        except WebSocketDisconnect:
            pass
        finally:
            with self.lock:
                self.connections.pop(connection_id, None)
            with contextlib.suppress(AppError):
                limiter(current_settings().ws_frames_per_second).forget(connection_id)
            await conn.outbox.put(None)
            await writer
            disconnect = self._handler("$disconnect")
            if disconnect is not None:
                await run_in_threadpool(self._run_logged, disconnect, self._event("$disconnect", "DISCONNECT", connection_id, ws),
                                        self._context("websocket_disconnect"))

    @staticmethod
    def _frame_rate(connection_id: str) -> Verdict:
        """WS_FRAMES_PER_SECOND for one frame, on the event loop (see chalicelib.web.frame_rate)."""
        try:
            per_second = current_settings().ws_frames_per_second
        except AppError:
            return Verdict.ADMIT  # misconfigured: the handler answers the frame with what is wrong
        return limiter(per_second).check(connection_id)

    async def _writer(self, conn: _Connection) -> None:
        # One writer per connection keeps frames in the order the management API received them.
        while True:
            text = await conn.outbox.get()
            if text is None:
                return
            try:
                await conn.websocket.send_text(text)
            except Exception:  # noqa: BLE001 - the client went away; $disconnect follows
                return

    @staticmethod
    def _run_logged(handler: Callable[..., Any], *args: Any) -> Any:
        try:
            return handler(*args)
        except Exception:  # noqa: BLE001 - a Lambda's crash goes to its log, as in CloudWatch
            log.exception("handler %s failed", getattr(handler, "__name__", handler))
            return None

    # -- management API ------------------------------------------------------------------------

    async def management(self, request: Request) -> Response:
        edge.check_gateway_secret(request, self.secret)
        connection_id = request.path_params["connection_id"]
        with self.lock:
            conn = self.connections.get(connection_id)
        if conn is None:
            return Response(content=b'{"message":null}', status_code=410, media_type="application/json",
                            headers={"x-amzn-ErrorType": "GoneException"})
        if request.method == "POST":
            data = await edge.read_capped(request, edge.MANAGEMENT_MAX_BYTES, aws_type="PayloadTooLargeException")
            await conn.outbox.put(data.decode("utf-8", "replace"))
            return Response(status_code=200)
        if request.method == "DELETE":
            await conn.close()
            return Response(status_code=204)
        return JSONResponse({
            "ConnectedAt": conn.connected_at.isoformat(), "LastActiveAt": conn.last_active_at.isoformat(),
            "Identity": {"SourceIp": conn.source_ip, "UserAgent": conn.user_agent},
        })

    # -- Lambda Invoke API -----------------------------------------------------------------------

    async def invoke(self, request: Request) -> Response:
        edge.check_gateway_secret(request, self.secret)
        name = request.path_params["name"].rsplit(":", 1)[-1]
        function = next((f for f in self.chalice_app.pure_lambda_functions
                         if f.name == name or name.endswith(f"-{f.name}")), None)
        if function is None:
            return JSONResponse({"Type": "User", "message": f"Function not found: {name}"}, status_code=404,
                                headers={"x-amzn-ErrorType": "ResourceNotFoundException"})
        handler = getattr(importlib.import_module(self.app_module), function.handler_string.rsplit(".", 1)[1])
        payload = json.loads((await edge.read_capped(request, edge.INVOKE_MAX_BYTES, aws_type="RequestTooLargeException")) or b"{}")
        context = self._context(function.name, timeout=900)
        if request.headers.get("x-amz-invocation-type") == "Event":
            self.turns.submit(self._run_logged, handler, payload, context)
            return Response(status_code=202)
        result = await run_in_threadpool(handler, payload, context)
        return JSONResponse(result)


    def base_url(self) -> str:
        """This server's own URL (./scripts/dev sets LOCAL_GATEWAY_URL before serving)."""
        return os.environ.get("LOCAL_GATEWAY_URL", "http://127.0.0.1:8000")


def load_config(project_dir: Path, stage: str) -> Config:
    """The Chalice config of `stage`, as `chalice local` reads it."""
    from chalice.cli.factory import CLIFactory

    return CLIFactory(str(project_dir)).create_config_obj(chalice_stage_name=stage)
