"""The websocket edge: API Gateway events in, service calls out, refusals as status codes.

app.py imports this module in every Lambda, so the realtime package is imported inside the
handlers: the REST Lambda's cold start does not pay for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from chalice import Response
from chalice.app import WebsocketDisconnectedError, WebsocketEvent

from chalicelib import secrets
from chalicelib.aws import aws_session
from chalicelib.config import current_settings
from chalicelib.container import Container, get_container
from chalicelib.errors import AppError
from chalicelib.identity.principal import EndUser
from chalicelib.identity.token_shape import looks_like_jwt
from chalicelib.ids import ID_PATTERN
from chalicelib.security import bearer_token, key_matches
from chalicelib.web.access import forbidden_user, may_connect
from chalicelib.web.liveness import open_check

if TYPE_CHECKING:
    from chalicelib.realtime.service import WsEvent
from chalicelib.telemetry import log_context, tracing

log = logging.getLogger(__name__)

BINARY_FRAME = (
    'Binary frames are not supported: send each frame as JSON text, such as {"action": "message", "prompt": "Hi"}.'
)


def container() -> Container:
    secrets.ensure_loaded()
    return get_container(current_settings())


def connect(event: WebsocketEvent, websocket_api: Any = None) -> Response:
    """$connect: 200 accepts the upgrade; 401/403/404 refuse it with a JSON reason, and 429
    (`too_many_connections`) one past WS_CONNECTIONS_PER_SESSION.

    A user token (in `Authorization: Bearer` or `?access_token=`) opens only its own user's
    sessions; the /setup token and the API key work as before.
    """
    from chalicelib.realtime.service import WsEvent
    from chalicelib.web import engineio_lambda

    raw = event.to_dict()
    with _bound(raw, sessionId=(raw.get("queryStringParameters") or {}).get("sessionId")), \
            tracing.span("websocket connect", {"websocket.connection_id": event.connection_id}, kind="server"):
        try:
            refused = _origin_refusal(event)
            if refused is not None:
                return refused
            if engineio_lambda.is_engineio(raw):
                return engineio_lambda.connect(container(), raw)
            ws_event = WsEvent.from_lambda_event(raw)
            user = _user_of(ws_event)
            if user is not None:
                session_id = (ws_event.query or {}).get("sessionId") or ""
                owner = container().sessions.owner_of(session_id) if ID_PATTERN.fullmatch(session_id) else None
                if not may_connect(user, owner):
                    raise forbidden_user()
            alive = open_check(websocket_api, ws_event.domain_name, ws_event.stage) if websocket_api is not None else None
            decision = container().realtime.connect(ws_event, preauthorized=user is not None, alive=alive)
        except AppError as exc:
            log.info("websocket connect refused: %s", exc.code)
            return Response(body=json.dumps({"error": exc.message, "code": exc.code}), status_code=exc.status)
        log.info("websocket connect %s: %d%s", event.connection_id, decision.status,
                 f" ({decision.code})" if decision.code else "")
    if decision.status == 200:
        return Response(body="", status_code=200)
    return Response(body=json.dumps({"error": decision.error, "code": decision.code}), status_code=decision.status,
                    headers={"Content-Type": "application/json"})


def _user_of(event: WsEvent) -> EndUser | None:
    """The end user a connection's user token names, or None when it carries none (the API
    key or a /setup token, which the realtime service checks)."""
    services = container()
    auth = services.settings.auth
    if not auth.accepts_user_tokens:
        return None
    bearer = bearer_token(event.headers or {})
    candidates = [bearer, (event.query or {}).get("access_token")]
    token = next((t for t in candidates if t and looks_like_jwt(t) and not key_matches(services.settings, t)), None)
    return services.user_tokens.verify(token) if token is not None else None


def _origin_refusal(event: WebsocketEvent) -> Response | None:
    """A 403 for a browser page whose Origin is not allowed (the same allow-list as CORS),
    decided before any token is looked at: browsers let any page open a websocket anywhere."""
    from chalicelib.web.cors import origin_refused

    refused = origin_refused(container().settings, event.to_dict().get("headers") or {})
    if refused is None:
        return None
    return Response(body=json.dumps({"error": refused, "code": "origin_not_allowed"}), status_code=403,
                    headers={"Content-Type": "application/json"})


def message(event: WebsocketEvent, websocket_api: Any) -> None:
    """$default: one client frame."""
    from chalicelib.realtime.protocol import error_frame
    from chalicelib.realtime.sender import ChaliceSender
    from chalicelib.realtime.service import WsEvent

    sender = ChaliceSender(websocket_api)
    raw = event.to_dict()
    ws_event = WsEvent.from_lambda_event(raw)
    # (The local gateway checks the rate before a frame takes one of its workers, and says so.)
    checked = bool((raw.get("requestContext") or {}).get("frameRateChecked"))
    if not checked and not _within_frame_rate(ws_event, sender, websocket_api):
        return
    if raw.get("isBase64Encoded"):
        # API Gateway hands a binary frame over base64-encoded; the protocol is JSON text only.
        sender.configure(ws_event.domain_name, ws_event.stage)
        sender.send(ws_event.connection_id, error_frame(BINARY_FRAME, "binary_frame"))
        return
    # The trace starts here and goes on in the turn runner (the dispatcher carries its traceparent).
    with _bound(raw), tracing.span("websocket message", {"websocket.connection_id": ws_event.connection_id},
                                   kind="server"):
        try:
            services = container()
        except AppError as exc:
            sender.send(ws_event.connection_id, error_frame(exc.message, exc.code))
            return
        from chalicelib.web import engineio_lambda

        if engineio_lambda.message(services, raw, sender):
            return
        services.realtime.message(ws_event, sender)


def _within_frame_rate(event: WsEvent, sender: Any, websocket_api: Any) -> bool:
    """WS_FRAMES_PER_SECOND, checked before the frame touches storage (see frame_rate.py). A
    refused plain frame is told once a second; a Socket.IO packet (not JSON) is dropped without a
    reply (its framing is known only from storage); a flood closes the connection."""
    from chalicelib.web.frame_rate import Verdict, limiter, refusal

    try:
        per_second = current_settings().ws_frames_per_second
    except AppError:
        return True  # misconfigured: the frame is answered with what is wrong (see message)
    verdict = limiter(per_second).check(event.connection_id)
    if verdict is Verdict.ADMIT:
        return True
    sender.configure(event.domain_name, event.stage)
    if verdict is Verdict.REFUSE_AND_TELL and (event.body or "").lstrip().startswith("{"):
        sender.send(event.connection_id, refusal(per_second))
    elif verdict is Verdict.CLOSE:
        log.warning("websocket %s closed: it kept sending past %d frames a second", event.connection_id, per_second)
        with contextlib.suppress(WebsocketDisconnectedError):
            websocket_api.close(event.connection_id)
    return False


def disconnect(event: WebsocketEvent) -> None:
    """$disconnect: forget the connection; a running turn goes on."""
    from chalicelib.realtime.service import WsEvent
    from chalicelib.web import engineio_lambda

    raw = event.to_dict()
    with _bound(raw), tracing.span("websocket disconnect", {"websocket.connection_id": event.connection_id}, kind="server"):
        from chalicelib.web.frame_rate import limiter

        services = container()
        limiter(services.settings.ws_frames_per_second).forget(event.connection_id)
        conn = services.realtime.disconnect(WsEvent.from_lambda_event(raw))
        if conn is not None and conn.socketio:
            # (A Socket.IO client refused at its CONNECT has no connection record: the ping forgets it.)
            engineio_lambda.disconnect(services, conn.connection_id)
        log.info("websocket disconnect %s", event.connection_id)


def _bound(raw: dict[str, Any], **ids: str | None) -> Any:
    """The log ids of one API Gateway websocket event."""
    return log_context.bound(requestId=(raw.get("requestContext") or {}).get("requestId"), **ids)


def run_turns(payload: dict[str, Any], context: Any, websocket_api: Any) -> dict[str, Any]:
    """The turn runner Lambda: run the session's queued messages."""
    session_id = str(payload.get("sessionId", ""))
    with log_context.bound(requestId=getattr(context, "aws_request_id", None), sessionId=session_id or None), \
            tracing.continued(payload), tracing.span("turn runner", kind="consumer"):
        return _run_turns(payload, session_id, context, websocket_api)


def _run_turns(payload: dict[str, Any], session_id: str, context: Any, websocket_api: Any) -> dict[str, Any]:
    from chalicelib.realtime.dispatch import LambdaDispatcher
    from chalicelib.realtime.sender import ChaliceSender
    from chalicelib.web import engineio_lambda

    services = container()
    if "engineio" in payload:  # a Socket.IO client's open packet (see engineio_lambda)
        return engineio_lambda.background(services, payload, ChaliceSender(websocket_api))
    runner = services.turn_runner(engineio_lambda.EngineIOSender(ChaliceSender(websocket_api), services.engineio_links))
    time_left = (lambda: context.get_remaining_time_in_millis() / 1000) if hasattr(context, "get_remaining_time_in_millis") else None
    # Hand a long queue over to a fresh invocation of this very function (its name is only
    # known at run time when CloudFormation names it).
    name = getattr(context, "function_name", None)
    dispatcher = LambdaDispatcher(aws_session().client("lambda"), name) if name and name != "turn_runner" else services.dispatcher
    handoff = None
    if isinstance(payload.get("handoff"), dict):
        from pydantic import ValidationError

        from chalicelib.realtime.handoff import Handoff

        try:
            handoff = Handoff.model_validate(payload["handoff"])
        except ValidationError as exc:  # the runner claims from the stored state instead
            log.warning("dropped a turn handoff that does not parse: %s", exc.errors()[0]["msg"])
    ran = runner.run(session_id, time_left=time_left, reinvoke=lambda: dispatcher.dispatch(session_id), handoff=handoff)
    return {"sessionId": session_id, "turns": ran}


def turn_failures(records: Any, websocket_api: Any) -> dict[str, str]:
    """The turn runner's on-failure destination (SQS): repair each failed session's turn and tell
    its client. A record that is not one is logged and dropped (it would fail every retry); a
    repair storage could not finish raises, so SQS delivers the record again."""
    from pydantic import ValidationError

    from chalicelib.realtime.failed_invocations import FailedInvocation
    from chalicelib.realtime.sender import ChaliceSender

    services = container()
    outcomes: dict[str, str] = {}
    for record in records:
        try:
            failed = FailedInvocation.model_validate_json(record.body)
        except ValidationError as exc:
            log.error("dropped a turn failure record that is not one (%s): %.300s", exc.errors()[0]["msg"], record.body)
            continue
        with log_context.bound(sessionId=failed.session_id):
            outcome = services.turn_runner(ChaliceSender(websocket_api)).give_up(failed.session_id, failed.why())
            log.warning("turn runner failed for good on session %s (%s): %s", failed.session_id, failed.why(), outcome)
        if outcome == "failed":
            raise RuntimeError(f"could not repair the failed turn of session {failed.session_id}: storage failed")
        if outcome == "repaired":
            # Messages queued behind the failed turn run now, as they would have after it.
            services.realtime.start_runner(failed.session_id)
        outcomes[failed.session_id] = outcome
    return outcomes


def resume_interrupted_turns() -> list[str]:
    """After a restart of the local gateway: start runners for the turns the old process left."""
    return container().realtime.resume_interrupted()


def ping_socketio_clients(websocket_api: Any) -> dict[str, Any]:
    """The scheduled Engine.IO ping of every Socket.IO client (see engineio_lambda)."""
    from chalicelib.realtime.sender import ChaliceSender
    from chalicelib.web import engineio_lambda

    return {"pinged": engineio_lambda.ping_all(container(), ChaliceSender(websocket_api))}
