"""Socket.IO through API Gateway's WebSocket API: Engine.IO v4 framing in the Lambda handlers.

A socket.io-client with `transports: ['websocket']` opens a plain websocket with `?EIO=4&
transport=websocket` and waits for the server's open packet. API Gateway cannot send during
`$connect`, so `$connect` records the connection and asks the turn runner Lambda to send the
open packet as soon as the connection is up. After that, each websocket message is one Engine.IO
packet: `40` connects a namespace (the Socket.IO auth payload is checked there), `42` carries an
event, `43` acknowledges a `hook_request`, `3` answers a ping. The scheduled ping (app.py's
socketio_ping, every minute) keeps clients from timing out. Events go through
chalicelib.web.socketio_edge to the same RealtimeService as the plain protocol.

Polling is not offered: API Gateway's WebSocket API serves websockets only, and a polling
transport would need an HTTP route holding requests open across Lambda invocations.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from chalice import Response

from chalicelib.container import Container
from chalicelib.errors import AppError
from chalicelib.realtime import engineio_packets as packets
from chalicelib.realtime.engineio_links import EngineIOLink, EngineIOLinks
from chalicelib.realtime.protocol import error_frame
from chalicelib.realtime.sender import ChaliceSender
from chalicelib.realtime.service import WsEvent
from chalicelib.realtime.socketio_events import NAMESPACES, ServerEvent, ack_id, server_events
from chalicelib.security import bearer_token, key_matches
from chalicelib.web import socketio_edge
from chalicelib.web.auth import user_token_among
from chalicelib.web.liveness import open_check

log = logging.getLogger(__name__)

#: The scheduled ping runs every minute; a client gives up after interval + timeout without one.
PING_INTERVAL_MS = 60_000
PING_TIMEOUT_MS = 60_000
MAX_PAYLOAD = 128 * 1024  # API Gateway's limit per websocket message
#: How long the open packet is retried while API Gateway finishes the connection.
OPEN_WITHIN_SECONDS = 10.0
#: A link this young may not be connected yet: the ping does not take "gone" for an answer.
SETTLING_SECONDS = 30.0


def is_engineio(event: dict[str, Any]) -> bool:
    """A `$connect` from a Socket.IO client (`?EIO=...` in the URL)."""
    return "EIO" in (event.get("queryStringParameters") or {})


class EngineIOSender:
    """A Sender that speaks the original's events to Engine.IO connections and plain JSON
    frames to every other connection."""

    def __init__(self, inner: ChaliceSender, links: EngineIOLinks) -> None:
        self.inner = inner
        self.links = links

    def configure(self, domain_name: str, stage: str) -> None:
        self.inner.configure(domain_name, stage)

    def send(self, connection_id: str, payload: dict[str, Any]) -> bool:
        link = self.links.get(connection_id)
        if link is None or link.namespace is None:
            return self.inner.send(connection_id, payload)
        delivered = True
        for event in server_events(payload):
            delivered = self.emit(link, event) and delivered
        return delivered

    def emit(self, link: EngineIOLink, event: ServerEvent) -> bool:
        """One Socket.IO event; a `hook_request` carries the ack id of its tool call."""
        ack = ack_id(event.ack_tool_use_id) if event.ack_tool_use_id else None
        return self.inner.send_text(link.connection_id, packets.event(link.namespace or "/", event.name, event.data, ack))


def connect(services: Container, event: dict[str, Any]) -> Response:
    """`$connect` of an Engine.IO client: record it, have the open packet sent, accept."""
    ws = WsEvent.from_lambda_event(event)
    query = dict(ws.query or {})
    if query.get("EIO") != "4":
        return _refuse(400, "Only Engine.IO 4 is spoken here: use socket.io-client 3 or 4.", "engineio_version")
    if query.get("transport") != "websocket":
        return _refuse(400, "Only the websocket transport is offered here: io(url, {transports: ['websocket']}).",
                       "transport_not_offered")
    operator = key_matches(services.settings, bearer_token(ws.headers or {}))
    # Only $connect sees the headers: a user token there (or in the query) is verified now, and
    # the link keeps the user it names, never the token.
    user_token = user_token_among(services.settings, bearer_token(ws.headers or {}), query.get("access_token"),
                                  query.get("token"))
    try:
        token_user = services.user_tokens.verify(user_token).user_id if user_token is not None else None
    except AppError as exc:
        return _refuse(exc.status, exc.message, exc.code)
    services.engineio_links.add(ws.connection_id, ws.domain_name, ws.stage, query, operator, token_user)
    services.background.invoke({"engineio": "open", "connectionId": ws.connection_id, "domainName": ws.domain_name,
                                "stage": ws.stage})
    return Response(body="", status_code=200)


def message(services: Container, event: dict[str, Any], inner: ChaliceSender) -> bool:
    """`$default`: handle the message if it is an Engine.IO packet of an Engine.IO connection
    (False: not one, the plain protocol handles it)."""
    body = event.get("body")
    if not isinstance(body, str) or not body[:1].isdigit() or event.get("isBase64Encoded"):
        return False
    ws = WsEvent.from_lambda_event(event)
    link = services.engineio_links.get(ws.connection_id)
    if link is None:
        return False
    inner.configure(ws.domain_name, ws.stage)
    sender = EngineIOSender(inner, services.engineio_links)
    try:
        _packet(services, link, body, sender)
    except packets.PacketError as exc:
        sender.send(link.connection_id, error_frame(str(exc), "invalid_packet"))
    except AppError as exc:
        sender.send(link.connection_id, error_frame(exc.message, exc.code))
    return True


def _packet(services: Container, link: EngineIOLink, text: str, sender: EngineIOSender) -> None:
    kind = packets.engine_type(text)
    if kind == packets.PING:  # an Engine.IO 3 habit; answered all the same
        sender.inner.send_text(link.connection_id, packets.PONG + text[1:])
        return
    if kind != packets.MESSAGE:
        return  # pong, close, noop: nothing to do (the websocket's close brings $disconnect)
    packet = packets.decode_socket(text[1:])
    handshake = _handshake(services, link, packet.data if packet.type == packets.CONNECT else None)
    if packet.type == packets.CONNECT:
        _connect_namespace(services, link, packet, handshake, sender)
    elif packet.namespace != link.namespace:
        refused = socketio_edge.SocketIORefused(f"Not connected to namespace {packet.namespace!r}: connect first.",
                                                "namespace_not_connected")
        sender.inner.send_text(link.connection_id, packets.encode_socket(packets.CONNECT_ERROR, packet.namespace, refused.data()))
    elif packet.type == packets.EVENT:
        args = packet.data if isinstance(packet.data, list) else []
        if not args or not isinstance(args[0], str):
            raise packets.PacketError("An event packet holds [\"name\", data].")
        def notify(notice: ServerEvent) -> None:
            sender.emit(link, notice)

        socketio_edge.handle_event(services, handshake, args[0], args[1:], sender, notify)
        if packet.ack_id is not None:
            sender.inner.send_text(link.connection_id, packets.encode_socket(packets.ACK, packet.namespace, [], packet.ack_id))
    elif packet.type == packets.ACK:
        _answer(services, link, packet, handshake, sender)
    elif packet.type == packets.DISCONNECT:
        socketio_edge.close(services, link.connection_id)


def _connect_namespace(services: Container, link: EngineIOLink, packet: packets.SocketPacket,
                       handshake: socketio_edge.Handshake, sender: EngineIOSender) -> None:
    namespace = packet.namespace
    try:
        if namespace not in NAMESPACES:
            raise socketio_edge.SocketIORefused(f"Unknown namespace {namespace!r}: use '/' or '/ws'.", "unknown_namespace")
        if link.namespace not in (None, namespace):
            raise socketio_edge.SocketIORefused("One namespace per connection here: open another connection.",
                                                "one_namespace_per_connection")

        def accepted() -> None:
            services.engineio_links.connected(link, namespace)  # from here on, frames are sent as events

        alive = open_check(sender.inner.websocket_api, handshake.domain_name, handshake.stage)
        socketio_edge.open_session(services, handshake, sender, accepted, alive=alive)
        # Acknowledged last: the client holds events received before it (a reconnect's status and
        # history) and delivers them first, before it sends anything of its own.
        sender.inner.send_text(link.connection_id, packets.encode_socket(packets.CONNECT, namespace, {"sid": link.sid}))
    except socketio_edge.SocketIORefused as refused:
        sender.inner.send_text(link.connection_id, packets.encode_socket(packets.CONNECT_ERROR, namespace, refused.data()))


def _answer(services: Container, link: EngineIOLink, packet: packets.SocketPacket, handshake: socketio_edge.Handshake,
            sender: EngineIOSender) -> None:
    """A `hook_request` acknowledgement: its ack id names the tool call it answers."""
    conn = services.realtime.connections.get(link.connection_id)
    state = services.realtime.states.read(conn.session_id) if conn is not None else None
    pending = state.pending_permission if state is not None else None
    if pending is None or packet.ack_id is None or ack_id(pending.tool_use_id) != packet.ack_id:
        sender.send(link.connection_id, error_frame(
            "This acknowledgement answers no waiting hook_request: it was answered, timed out, or its turn ended.",
            "no_pending_permission"))
        return
    response = packet.data[0] if isinstance(packet.data, list) and packet.data else None
    socketio_edge.handle_ack(services, handshake, pending.tool_use_id, response, sender)


def _handshake(services: Container, link: EngineIOLink, auth: Any) -> socketio_edge.Handshake:
    base = services.settings.websocket_url or f"wss://{link.domain_name}/{link.stage}"
    return socketio_edge.Handshake(
        connection_id=link.connection_id, domain_name=link.domain_name, stage=link.stage, websocket_base=base.rstrip("/"),
        query=link.query, auth=auth, token_sha256=link.token_sha256, operator_header=link.operator_header,
        token_user=link.token_user)


def disconnect(services: Container, connection_id: str) -> None:
    """`$disconnect`: forget the Engine.IO record (a no-op for a plain connection)."""
    services.engineio_links.remove(connection_id)


def background(services: Container, payload: dict[str, Any], inner: ChaliceSender) -> dict[str, Any]:
    """The turn runner Lambda's Engine.IO work: the open packet of a new connection."""
    kind = payload.get("engineio")
    if kind == "open":
        return {"opened": send_open(inner, str(payload.get("connectionId", "")), str(payload.get("domainName", "")),
                                    str(payload.get("stage", "")))}
    return {"error": f"Unknown engineio work {kind!r}: only 'open'."}


def send_open(inner: ChaliceSender, connection_id: str, domain_name: str, stage: str) -> bool:
    """Send the open packet, retrying while API Gateway still reports the connection gone (it
    is until `$connect` has returned); bounded by OPEN_WITHIN_SECONDS."""
    from chalicelib.realtime.engineio_links import engine_sid

    inner.configure(domain_name, stage)
    text = packets.open_packet(engine_sid(connection_id), PING_INTERVAL_MS, PING_TIMEOUT_MS, MAX_PAYLOAD)
    deadline = time.monotonic() + OPEN_WITHIN_SECONDS
    for attempt in range(200):
        try:
            if inner.send_text(connection_id, text):
                return True
        except Exception as exc:  # noqa: BLE001 - e.g. ForbiddenException while the connection settles; retried
            log.info("open packet for %s not sent yet: %s", connection_id, exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.02 * (attempt + 1), 0.5))
    log.warning("connection %s never came up for its open packet", connection_id)
    return False


def ping_all(services: Container, inner: ChaliceSender) -> int:
    """Ping every Engine.IO client (`2`; the client answers `3`). A connection that is gone
    (and old enough to have been up) is forgotten. Returns how many were pinged."""
    from chalicelib.realtime.state import utcnow

    pinged = 0
    for link in services.engineio_links.all():
        inner.configure(link.domain_name, link.stage)
        if inner.send_text(link.connection_id, packets.PING):
            pinged += 1
        elif (utcnow() - link.opened_at).total_seconds() > SETTLING_SECONDS:
            services.engineio_links.remove(link.connection_id)
            socketio_edge.close(services, link.connection_id)
    return pinged


def _refuse(status: int, message: str, code: str) -> Response:
    return Response(body=json.dumps({"error": message, "code": code}), status_code=status,
                    headers={"Content-Type": "application/json"})
