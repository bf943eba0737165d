"""The Socket.IO edge: who may connect, and what a connection says to the session core.

Both Socket.IO transports (python-socketio under ./scripts/dev, Engine.IO framing over API
Gateway in AWS) end here. A connection is authenticated and, as the original did, its session
is created on connect when the caller may create it; then every client event is translated
(chalicelib.realtime.socketio_events) into the plain protocol's frames and handled by the same
RealtimeService as a plain websocket. Nothing here keeps session state of its own.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chalicelib.container import Container
from chalicelib.errors import AppError, NotFound, QuotaExceeded
from chalicelib.identity.principal import EndUser
from chalicelib.ids import ID_PATTERN
from chalicelib.realtime.protocol import frame
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.service import WsEvent
from chalicelib.realtime.socketio_events import EventError, ServerEvent, ack_frame, client_event
from chalicelib.security import bearer_token, key_matches
from chalicelib.services.sessions import SessionRecord
from chalicelib.web.access import forbidden_user
from chalicelib.web.auth import user_token_among

CREDENTIALS_HELP = (
    "send the token of POST /setup/{sessionId} or the end user's token as io(url, {auth: {token}}) "
    "(or ?token= / ?access_token= in the URL), "
    "or the operator key with the user: io(url, {auth: {apiKey: API_KEY, userId}}) "
    "(or 'Authorization: Bearer <API_KEY>' and ?userId=)"
)


class SocketIORefused(Exception):
    """A connection refused: the client gets a Socket.IO `connect_error` with this message."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def data(self) -> dict[str, str]:
        """The CONNECT_ERROR payload (socket.io-client shows `message`; `data` carries the code)."""
        return {"message": self.message, "data": {"code": self.code}}  # type: ignore[dict-item]


@dataclass(frozen=True)
class Handshake:
    """What a Socket.IO connection presented: the URL's query, the headers, the `auth` payload."""

    connection_id: str
    domain_name: str
    stage: str
    websocket_base: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: Any = None
    # Over API Gateway, what $connect saw and checked: the query token's digest, and whether
    # the headers carried the operator key (only $connect gets the headers).
    token_sha256: str | None = None
    operator_header: bool = False
    # Over API Gateway, the user a user token in the headers or the query named, verified at $connect.
    token_user: str | None = None

    def ws_event(self, body: str | None = None) -> WsEvent:
        return WsEvent(self.connection_id, self.domain_name, self.stage, body=body)


def open_session(services: Container, handshake: Handshake, sender: Sender,
                 accepted: Callable[[], None] | None = None, alive: Callable[[str], bool] | None = None) -> SessionRecord:
    """Authenticate, create the session if the caller may and it does not exist, bind the
    connection to it (within WS_CONNECTIONS_PER_SESSION; `alive` as RealtimeService.attach's),
    call `accepted` (before anything is sent), and (a reconnect) send `status: Session resumed`
    and the history.

    Raises SocketIORefused with what to send instead."""
    record = _authorize(services, handshake)
    realtime = services.realtime
    known = realtime.states.read(record.session_id) is not None
    try:
        state = realtime.attach(handshake.ws_event(), record, socketio=True, alive=alive)
    except QuotaExceeded as exc:
        raise SocketIORefused(exc.message, exc.code) from None
    if accepted is not None:
        accepted()
    if known:
        # Live events from now on (nothing replayed: the history below has what was said),
        # then the history, as the original sent them to a reconnecting client.
        resume = {"action": "resume", "afterSeq": state.seq_floor}
        # A resume that finds a turn still recorded (even its last instant) leaves the replay to
        # the runner and says nothing; a Socket.IO client is told it resumed all the same.
        realtime.message(handshake.ws_event(json.dumps(resume)), _Dropping(sender, _is_resumed))
        sender.send(handshake.connection_id, frame("status", status="resumed", lastSeq=state.seq_floor, replayed=0))
        realtime.message(handshake.ws_event(json.dumps({"action": "get_history"})), _Dropping(sender, _is_empty_history))
    return record


def handle_event(services: Container, handshake: Handshake, name: str, args: list[Any], sender: Sender,
                 notify: Callable[[ServerEvent], None]) -> None:
    """One client event: its plain frames through the realtime service, in order; `notify`
    emits a ServerEvent directly (a notice the translation itself produced)."""
    try:
        frames, notices = client_event(name, args)
    except EventError as exc:
        sender.send(handshake.connection_id, frame("error", message=exc.message, code=exc.code))
        return
    for notice in notices:
        notify(notice)
    for plain in frames:
        services.realtime.message(handshake.ws_event(json.dumps(plain)), sender)


def handle_ack(services: Container, handshake: Handshake, tool_use_id: str, response: Any, sender: Sender) -> None:
    """A `hook_request` acknowledgement: the answer to that tool call's permission request."""
    services.realtime.message(handshake.ws_event(json.dumps(ack_frame(tool_use_id, response))), sender)


def close(services: Container, connection_id: str) -> None:
    """The connection ended: forget it (a running turn goes on, as on the plain protocol)."""
    services.realtime.disconnect(WsEvent(connection_id, "", ""))


def _authorize(services: Container, hs: Handshake) -> SessionRecord:
    settings = services.settings
    auth = hs.auth if isinstance(hs.auth, dict) else {}
    session_id = str(auth.get("sessionId") or hs.query.get("sessionId") or "")
    if not ID_PATTERN.match(session_id) or session_id in (".", ".."):
        raise SocketIORefused(
            "Missing or invalid sessionId: connect with io(url, {query: {sessionId: 'session-abc'}}) "
            "(letters, digits, '.', '_', '-').", "session_id_missing")
    token = _text(auth.get("token")) or hs.query.get("token")
    key = _text(auth.get("apiKey")) or bearer_token(hs.headers)
    user_id = _text(auth.get("userId")) or hs.query.get("userId")
    end_user = _end_user(services, hs, token)
    if end_user is not None:
        return _own_session(services, hs, session_id, end_user, user_id)
    record = services.sessions.find_record(session_id)
    if token or hs.token_sha256:
        if record is None:
            raise SocketIORefused(f"Session {session_id!r} does not exist: call POST /setup/{session_id} for its token, "
                                  "or connect with the operator key and userId to create it.", "session_not_found")
        matches = (services.sessions.token_matches(record, token) if token
                   else hmac.compare_digest(str(hs.token_sha256), record.token_sha256))
        if not matches:
            raise SocketIORefused("Invalid token for this session: call POST /setup again for a new one.", "invalid_token")
        return record
    if key is not None and not key_matches(settings, key):
        raise SocketIORefused("Invalid API key: check it against the server's API_KEY.", "invalid_api_key")
    open_development = settings.api_key is None and not settings.is_production and bool(user_id)
    if key is None and not hs.operator_header and not open_development:
        raise SocketIORefused(f"Missing credentials: {CREDENTIALS_HELP}.", "missing_credentials")
    # The operator (or development without API_KEY) acting for `userId`.
    if not user_id:
        raise SocketIORefused("The operator key acts for a user: add userId (auth: {apiKey, userId} or ?userId=).",
                              "user_id_missing")
    if record is not None and record.user_id != user_id:
        raise SocketIORefused(f"Session {session_id!r} belongs to another user: choose a new sessionId.",
                              "session_owned_by_another_user")
    return record if record is not None else _set_up(services, hs, session_id, user_id)


def _end_user(services: Container, hs: Handshake, auth_token: str | None) -> EndUser | None:
    """The end user a user token names (`auth: {token}`, `?access_token=`, `Authorization:
    Bearer`, or what $connect verified over API Gateway); None when the connection carries none.
    A user token that does not verify is refused, saying why."""
    if hs.token_user is not None:
        return EndUser(hs.token_user)
    token = user_token_among(services.settings, auth_token, hs.query.get("access_token"), bearer_token(hs.headers))
    if token is None:
        return None
    try:
        return services.user_tokens.verify(token)
    except AppError as exc:
        raise SocketIORefused(exc.message, exc.code) from None


def _own_session(services: Container, hs: Handshake, session_id: str, user: EndUser,
                 requested_user: str | None) -> SessionRecord:
    """A user token opens only its own user's sessions, as on the plain websocket: one it owns,
    or a new id (set up for it here). Anything else is `forbidden_user`, the same answer whether
    the other user or session exists or not."""
    owner = services.sessions.owner_of(session_id)
    if (requested_user is not None and requested_user != user.user_id) or owner not in (None, user.user_id):
        refused = forbidden_user()
        raise SocketIORefused(refused.message, refused.code)
    record = services.sessions.find_record(session_id)
    return record if record is not None else _set_up(services, hs, session_id, user.user_id)


def _set_up(services: Container, hs: Handshake, session_id: str, user_id: str) -> SessionRecord:
    """Create the session on connect, as the original did (the owner's claim and quotas apply)."""
    try:
        services.sessions.setup(session_id, user_id, hs.websocket_base)
        return services.sessions.get_record(session_id)
    except NotFound as exc:
        raise SocketIORefused(exc.message, exc.code) from None
    except AppError as exc:
        raise SocketIORefused(f"Could not set the session up: {exc.message}", exc.code) from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_resumed(payload: dict[str, Any]) -> bool:
    return payload.get("event") == "status" and payload.get("status") == "resumed"


def _is_empty_history(payload: dict[str, Any]) -> bool:
    """The original only sent a reconnecting client its history when there was one."""
    return payload.get("event") == "history" and not payload.get("messages")


class _Dropping:
    """A sender that drops the frames `drop` picks and passes the rest on."""

    def __init__(self, inner: Sender, drop: Callable[[dict[str, Any]], bool]) -> None:
        self.inner = inner
        self.drop = drop

    def configure(self, domain_name: str, stage: str) -> None:
        self.inner.configure(domain_name, stage)

    def send(self, connection_id: str, payload: dict[str, Any]) -> bool:
        return True if self.drop(payload) else self.inner.send(connection_id, payload)
