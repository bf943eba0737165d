"""Socket.IO 4 at /socket.io/ (polling and websocket, namespaces / and /ws), for the local gateway.

python-socketio speaks Engine.IO and Socket.IO; this module only connects it to the same
session core as the plain /ws: each Socket.IO connection is registered with the gateway as a
connection the turn runner reaches through the management API, like a /ws client, and its
frames are translated into the original's events on the way out
(chalicelib.realtime.socketio_events). Events of one connection are handled one after another,
in the order they were emitted (start before message, interrupt before clear).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import socketio
from starlette.concurrency import run_in_threadpool

from chalicelib.config import current_settings
from chalicelib.realtime.protocol import encode
from chalicelib.realtime.socketio_events import NAMESPACES, ServerEvent, server_events
from chalicelib.web import socketio_edge
from chalicelib.web.cors import origin_refused
from chalicelib.web.frame_rate import Verdict, limiter, refusal

if TYPE_CHECKING:
    from devserver.server import LocalGatewayApp

log = logging.getLogger("gateway.socketio")



@dataclass
class SocketIOConnection:
    """A Socket.IO client as the gateway's management API sees a connection."""

    sid: str
    namespace: str
    handshake: socketio_edge.Handshake
    loop: asyncio.AbstractEventLoop
    close: Callable[[], Any]
    source_ip: str = "127.0.0.1"
    user_agent: str = ""
    connected_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    last_active_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    outbox: asyncio.Queue[str | ServerEvent | None] = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    writer: asyncio.Task[None] | None = None


class _OutboxSender:
    """The realtime service's direct replies, into the connection's outbox (no HTTP round trip)."""

    def __init__(self, conn: SocketIOConnection) -> None:
        self.conn = conn

    def configure(self, domain_name: str, stage: str) -> None:
        pass

    def send(self, connection_id: str, payload: dict[str, Any]) -> bool:
        self.conn.loop.call_soon_threadsafe(self.conn.outbox.put_nowait, encode(payload))
        return True

    def notify(self, event: ServerEvent) -> None:
        self.conn.loop.call_soon_threadsafe(self.conn.outbox.put_nowait, event)


class SocketIOGateway:
    """The python-socketio server bound to a LocalGatewayApp."""

    def __init__(self, gateway: LocalGatewayApp) -> None:
        self.gateway = gateway
        self.sio = socketio.AsyncServer(async_mode="asgi", namespaces=list(NAMESPACES), transports=["polling", "websocket"],
                                        cors_allowed_origins=self._origin_allowed, max_http_buffer_size=128 * 1024)
        self.by_sid: dict[tuple[str, str], SocketIOConnection] = {}
        for namespace in NAMESPACES:
            self.sio.on("connect", self._connect_handler(namespace), namespace=namespace)
            self.sio.on("disconnect", self._disconnect_handler(namespace), namespace=namespace)
            self.sio.on("*", self._event_handler(namespace), namespace=namespace)

    def asgi(self, other: Any) -> socketio.ASGIApp:
        """The gateway's ASGI app with /socket.io/ in front of it."""
        return socketio.ASGIApp(self.sio, other_asgi_app=other, socketio_path="socket.io")

    @staticmethod
    def _origin_allowed(origin: str | None) -> bool:
        return origin is None or origin_refused(current_settings(), {"origin": origin}) is None

    # -- connect / disconnect ------------------------------------------------------------

    def _connect_handler(self, namespace: str) -> Callable[..., Any]:
        async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            await self._connect(sid, namespace, environ, auth)
        return connect

    async def _connect(self, sid: str, namespace: str, environ: dict[str, Any], auth: Any) -> None:
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        base = self.gateway.base_url()
        handshake = socketio_edge.Handshake(
            connection_id=base64.b64encode(secrets.token_bytes(9)).decode()[:-1] + "=",
            domain_name=headers.get("host", "127.0.0.1"), stage=self.gateway.ws_stage,
            websocket_base=base.replace("http", "ws", 1) + "/ws", query=query, headers=headers, auth=auth)
        scope = environ.get("asgi.scope") or {}
        client = scope.get("client") or ("127.0.0.1", 0)
        conn = SocketIOConnection(sid, namespace, handshake, asyncio.get_running_loop(),
                                  close=lambda: self.sio.disconnect(sid, namespace=namespace),
                                  source_ip=client[0], user_agent=headers.get("user-agent", ""))
        conn.writer = asyncio.create_task(self._writer(conn))
        sender = _OutboxSender(conn)
        with self.gateway.lock:
            self.gateway.connections[handshake.connection_id] = conn
        try:
            async with conn.lock:
                await run_in_threadpool(self._open, handshake, sender)
        except socketio_edge.SocketIORefused as refused:
            await self._forget(conn)
            raise socketio.exceptions.ConnectionRefusedError(refused.message, {"code": refused.code}) from None
        except Exception:
            await self._forget(conn)
            log.exception("Socket.IO connect of %s failed", sid)
            raise socketio.exceptions.ConnectionRefusedError(
                "The server failed to open the session; it has been logged. Retry.", {"code": "internal_error"}) from None
        self.by_sid[(sid, namespace)] = conn

    def _open(self, handshake: socketio_edge.Handshake, sender: _OutboxSender) -> None:
        from chalicelib.web.websocket import container

        refused = origin_refused(current_settings(), handshake.headers)
        if refused is not None:
            raise socketio_edge.SocketIORefused(refused, "origin_not_allowed")
        # A connection this process does not hold is gone (closed without its disconnect, or
        # held by a server that was killed): not counted against WS_CONNECTIONS_PER_SESSION.
        connections = self.gateway.connections
        socketio_edge.open_session(container(), handshake, sender, alive=lambda cid: cid in connections)

    def _disconnect_handler(self, namespace: str) -> Callable[..., Any]:
        async def disconnect(sid: str, reason: Any = None) -> None:
            conn = self.by_sid.pop((sid, namespace), None)
            if conn is None:
                return
            await self._forget(conn)
            limiter(current_settings().ws_frames_per_second).forget(conn.handshake.connection_id)
            await run_in_threadpool(self._close, conn.handshake.connection_id)
        return disconnect

    @staticmethod
    def _close(connection_id: str) -> None:
        from chalicelib.web.websocket import container

        try:
            socketio_edge.close(container(), connection_id)
        except Exception:  # noqa: BLE001 - as a $disconnect Lambda's crash: logged, nothing else to do
            log.exception("Socket.IO disconnect of %s failed", connection_id)

    async def _forget(self, conn: SocketIOConnection) -> None:
        with self.gateway.lock:
            self.gateway.connections.pop(conn.handshake.connection_id, None)
        await conn.outbox.put(None)
        if conn.writer is not None:
            await conn.writer

    # -- events in -------------------------------------------------------------------------

    def _event_handler(self, namespace: str) -> Callable[..., Any]:
        async def on_event(event: str, sid: str, *args: Any) -> None:
            conn = self.by_sid.get((sid, namespace))
            if conn is None:
                return
            conn.last_active_at = datetime.now(timezone.utc)
            sender = _OutboxSender(conn)
            if not await self._within_frame_rate(conn, sender):
                return
            async with conn.lock:
                await run_in_threadpool(self._handle, conn, event, list(args), sender)
        return on_event

    async def _within_frame_rate(self, conn: SocketIOConnection, sender: _OutboxSender) -> bool:
        """WS_FRAMES_PER_SECOND, checked on the event loop before the event takes a worker (see
        chalicelib.web.frame_rate): told once a second, and a flood is disconnected."""
        per_second = current_settings().ws_frames_per_second
        verdict = limiter(per_second).check(conn.handshake.connection_id)
        if verdict is Verdict.REFUSE_AND_TELL:
            sender.send(conn.handshake.connection_id, refusal(per_second))
        elif verdict is Verdict.CLOSE:
            log.warning("Socket.IO client %s disconnected: it kept sending past %d events a second", conn.sid, per_second)
            await self.sio.disconnect(conn.sid, namespace=conn.namespace)
        return verdict is Verdict.ADMIT

    @staticmethod
    def _handle(conn: SocketIOConnection, event: str, args: list[Any], sender: _OutboxSender) -> None:
        from chalicelib.web.websocket import container

        socketio_edge.handle_event(container(), conn.handshake, event, args, sender, sender.notify)

    def _ack(self, conn: SocketIOConnection, tool_use_id: str) -> Callable[..., None]:
        def answered(*response: Any) -> None:
            async def run() -> None:
                from chalicelib.web.websocket import container

                async with conn.lock:
                    await run_in_threadpool(socketio_edge.handle_ack, container(), conn.handshake, tool_use_id,
                                            response[0] if response else None, _OutboxSender(conn))
            conn.loop.create_task(run())
        return answered

    # -- events out ------------------------------------------------------------------------

    async def _writer(self, conn: SocketIOConnection) -> None:
        # One writer per connection: events leave in the order the frames arrived.
        while True:
            item = await conn.outbox.get()
            if item is None:
                return
            try:
                events = [item] if isinstance(item, ServerEvent) else server_events(json.loads(item))
                for event in events:
                    callback = self._ack(conn, event.ack_tool_use_id) if event.ack_tool_use_id else None
                    await self.sio.emit(event.name, event.data, to=conn.sid, namespace=conn.namespace, callback=callback)
            except Exception:  # noqa: BLE001 - one bad frame must not silence the connection
                log.exception("Socket.IO emit to %s failed", conn.sid)
