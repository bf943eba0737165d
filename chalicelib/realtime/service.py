"""The websocket handlers' logic: connect, one frame at a time, disconnect.

Handlers answer fast: a `message` is queued in the session state and a turn runner is started
in the background; the runner streams the turn's events to the subscribed connection. Direct
replies (acknowledgements, history, errors about a frame) go straight back with `seq: 0`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from chalicelib.agent.model_client import MISSING_KEY
from chalicelib.agent.session_options import SessionOptions
from chalicelib.config import Settings
from chalicelib.errors import AppError, Conflict, NotFound, QuotaExceeded
from chalicelib.ids import ID_PATTERN
from chalicelib.realtime.clearing import CLEARING, clear_deferred, defer_clear, empty_conversation
from chalicelib.realtime.connections import Connection, ConnectionRegistry
from chalicelib.realtime.dispatch import TurnDispatcher
from chalicelib.realtime.durable import durably
from chalicelib.realtime.event_log import EventLog
from chalicelib.realtime.handoff import Handoff
from chalicelib.realtime.lease import TurnRequest, claim_next
from chalicelib.realtime.permissions import record_decision
from chalicelib.realtime.protocol import (
    ClearFrame,
    FrameError,
    GetHistoryFrame,
    InterruptFrame,
    MessageFrame,
    PermissionFrame,
    ResumeFrame,
    StartFrame,
    error_frame,
    frame,
    parse_client_frame,
)
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import (
    MAX_QUEUE,
    RECENT_MESSAGES,
    AcceptedMessage,
    QueuedPrompt,
    SessionState,
    StateStore,
    Subscriber,
    Versioned,
    utcnow,
)
from chalicelib.security import bearer_token, key_matches
from chalicelib.services.conversations import ConversationsService
from chalicelib.services.quotas import QuotasService, daily_budget_reached
from chalicelib.services.sessions import SessionRecord, SessionsService
from chalicelib.services.skill_index import SkillIndex
from chalicelib.services.usage import UsageService
from chalicelib.storage import StorageFull, StorageUnavailable
from chalicelib.storage.base import StorageError
from chalicelib.telemetry import log_context

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class WsEvent:
    """The parts of an API Gateway websocket event the service uses."""

    connection_id: str
    domain_name: str
    stage: str
    body: str | None = None
    query: dict[str, str] | None = None
    headers: dict[str, str] | None = None

    @classmethod
    def from_lambda_event(cls, event: dict[str, Any]) -> WsEvent:
        ctx = event.get("requestContext") or {}
        return cls(
            connection_id=ctx.get("connectionId", ""),
            domain_name=ctx.get("domainName", ""),
            stage=ctx.get("stage", ""),
            body=event.get("body"),
            query=event.get("queryStringParameters") or {},
            headers=event.get("headers") or {},
        )


@dataclass(frozen=True)
class ConnectDecision:
    """`$connect`'s answer: 200 accepts; anything else refuses the upgrade with that status."""

    status: int
    error: str | None = None
    code: str | None = None


class RealtimeService:
    """Connect / message / disconnect for the agent websocket."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionsService,
        conversations: ConversationsService,
        states: StateStore,
        events: EventLog,
        connections: ConnectionRegistry,
        dispatcher: TurnDispatcher,
        quotas: QuotasService | None = None,
        usage: UsageService | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.conversations = conversations
        self.states = states
        self.events = events
        self.connections = connections
        self.dispatcher = dispatcher
        self.quotas = quotas
        self.usage = usage

    # -- $connect ------------------------------------------------------------------------

    def connect(self, event: WsEvent, *, preauthorized: bool = False,
                alive: Callable[[str], bool] | None = None) -> ConnectDecision:
        """Accept only a session /setup created, with its token or the API key (or, when the
        edge has already matched a user token to the session's owner, `preauthorized`), and
        only below the session's connection cap (see attach; `alive` as there)."""
        query = event.query or {}
        session_id = query.get("sessionId") or ""
        if not ID_PATTERN.match(session_id) or session_id in (".", ".."):
            return ConnectDecision(404, "Unknown or missing sessionId: call POST /setup first.", "session_not_found")
        try:
            record = self.sessions.get_record(session_id)
        except NotFound as exc:
            return ConnectDecision(404, exc.message, exc.code)
        refused = None if preauthorized else self._credential_refusal(event, record)
        if refused is not None:
            return refused
        self.attach(event, record, alive=alive)
        return ConnectDecision(200)

    def attach(self, event: WsEvent, record: SessionRecord, socketio: bool = False,
               alive: Callable[[str], bool] | None = None) -> SessionState:
        """Bind an authenticated connection to the session `record` describes (both protocols'
        connects end here); returns the session's live state.

        The session's open connections are counted in its state, by conditional writes, so the
        cap holds however many Lambdas connect at once: past WS_CONNECTIONS_PER_SESSION the
        connection is refused (429 `too_many_connections`). At the cap, `alive` (the management
        API's GetConnection) tells which recorded connections are gone without a $disconnect
        (a killed server), and those are forgotten first."""
        session_id = record.session_id
        state = self._count_connection(event.connection_id, record, alive)
        self.connections.add(event.connection_id, session_id, record.user_id, event.domain_name, event.stage, socketio)
        if state.turn is not None or state.queue:
            # A client reconnecting mid-turn may be back because the server died (kill -9, a
            # restart): a runner checks the turn's lease, and repairs the turn if it runs out;
            # a message queued when it died runs now.
            self._start_runner(session_id)
        return state

    def _count_connection(self, connection_id: str, record: SessionRecord,
                          alive: Callable[[str], bool] | None) -> SessionState:
        cap = self.settings.ws_connections_per_session
        gone: set[str] = set()

        def admit(state: SessionState) -> bool:
            _note_setup(state, record.skill_index)
            # Not subscribed yet: a reconnecting client's first frame is `resume`, which must see to
            # its missed events before any live one reaches it (start, message and resume subscribe).
            state.connections = [c for c in state.connections if c not in gone]
            if connection_id in state.connections:
                return True
            if len(state.connections) >= cap:
                return False
            state.connections.append(connection_id)
            return True

        def create() -> SessionState:
            return SessionState(session_id=record.session_id, user_id=record.user_id, conversation_id=record.session_id)

        admitted, state = self.states.update(record.session_id, admit, create=create)
        if not admitted and alive is not None:
            gone.update(c for c in state.connections if not alive(c))
            if gone:
                admitted, state = self.states.update(record.session_id, admit, create=create)
        if not admitted:
            raise QuotaExceeded(
                f"Session {record.session_id!r} already has {cap} open connections (WS_CONNECTIONS_PER_SESSION): "
                "close one (another tab or device) and connect again.",
                retry_after=5, code="too_many_connections",
            )
        return state

    def start_runner(self, session_id: str) -> None:
        """Dispatch a runner for the session's queue (after a failed turn was repaired)."""
        self._start_runner(session_id)

    def _credential_refusal(self, event: WsEvent, record: SessionRecord) -> ConnectDecision | None:
        """None when the connection carries the session's /setup token or the API key."""
        token = (event.query or {}).get("token")
        bearer = bearer_token(event.headers or {})
        if token is None and bearer is None:
            return ConnectDecision(
                401, "Missing credentials: add ?token=<token from /setup> or 'Authorization: Bearer <API_KEY>'.",
                "missing_credentials",
            )
        if (token is not None and self.sessions.token_matches(record, token)) or (
            bearer is not None and key_matches(self.settings, bearer)
        ):
            return None
        return ConnectDecision(403, "Invalid token for this session: call POST /setup again for a new one.", "invalid_token")

    def _start_runner(self, session_id: str) -> None:
        """Dispatch a runner; a failure here is logged, the next frame or connect tries again."""
        try:
            self.dispatcher.dispatch(session_id)
        except AppError as exc:
            log.warning("could not start a runner for session %s: %s", session_id, exc.message)

    def resume_interrupted(self) -> list[str]:
        """Start a runner for every session a dead server left running or queued (the local
        gateway calls this after a restart; in AWS the next frame or Lambda's retry does it)."""
        busy = self.states.sessions_with_work()
        for session_id in busy:
            self._start_runner(session_id)
        return busy

    # -- $disconnect ---------------------------------------------------------------------

    def disconnect(self, event: WsEvent) -> Connection | None:
        """Forget the connection (returned, if it was known); a running turn goes on and is saved."""
        conn = self.connections.get(event.connection_id)
        self.connections.remove(event.connection_id)
        if conn is None:
            return None

        def unsubscribe(state: SessionState) -> None:
            state.unsubscribe(event.connection_id)
            state.connections = [c for c in state.connections if c != event.connection_id]

        try:
            self.states.update(conn.session_id, unsubscribe)
        except AppError as exc:
            log.warning("disconnect of %s: %s", event.connection_id, exc.message)
        return conn

    # -- $default ------------------------------------------------------------------------

    def message(self, event: WsEvent, sender: Sender) -> None:
        """Handle one client frame; every problem becomes an `error` event on this connection."""
        sender.configure(event.domain_name, event.stage)
        reply = lambda payload: sender.send(event.connection_id, payload)  # noqa: E731
        conn, prefetched = self._connection_and_state(event)
        if conn is None:
            reply(error_frame("This connection is not registered (it may have expired): reconnect.", "unknown_connection"))
            return
        if prefetched is not None and prefetched.state.session_id != conn.session_id:
            prefetched = None  # the frame named another session: the record decides
        with log_context.bound(sessionId=conn.session_id, userId=conn.user_id):
            self._frame(conn, event, reply, prefetched)

    def _connection_and_state(self, event: WsEvent) -> tuple[Connection | None, Versioned | None]:
        """The connection's record and, when a `message` frame names its session, that session's
        state read at the same time (a turn start waits one round trip less)."""
        hint = _session_hint(event.body)
        if hint is None:
            return self.connections.get(event.connection_id), None
        with ThreadPoolExecutor(max_workers=1) as pool:
            state_f = pool.submit(self.states.read_versioned, hint)
            conn = self.connections.get(event.connection_id)
            try:
                prefetched = state_f.result()
            except (AppError, StorageError):
                prefetched = None  # the enqueue reads it again, and reports a failure itself
        return conn, prefetched

    def _frame(self, conn: Connection, event: WsEvent, reply: Callable[[dict[str, Any]], object],
               prefetched: Versioned | None = None) -> None:
        try:
            parsed = parse_client_frame(event.body)
        except FrameError as exc:
            log.info("frame refused: %s", exc.code)
            reply(error_frame(exc.message, exc.code))
            return
        log.info("frame %s", type(parsed).__name__)
        try:
            for payload in self._handle(conn, parsed, prefetched):
                reply(payload)
        except QuotaExceeded as exc:
            reply({**error_frame(exc.message, exc.code), "retryAfter": exc.retry_after})
        except AppError as exc:
            reply(error_frame(exc.message, exc.code))
        except Exception:  # noqa: BLE001 - the client must hear about it; the log has the rest
            log.exception("handling %s for session %s failed", type(parsed).__name__, conn.session_id)
            reply(error_frame("The server failed to handle this frame; it has been logged. Retry.", "internal_error"))

    def _handle(self, conn: Connection, parsed: BaseModel, prefetched: Versioned | None = None) -> list[dict[str, Any]]:
        if isinstance(parsed, StartFrame):
            return self._start(conn, parsed)
        if isinstance(parsed, MessageFrame):
            return self._message(conn, parsed, prefetched)
        if isinstance(parsed, InterruptFrame):
            return self._interrupt(conn)
        if isinstance(parsed, GetHistoryFrame):
            return [self._history(conn)]
        if isinstance(parsed, ClearFrame):
            return self._clear(conn)
        if isinstance(parsed, ResumeFrame):
            return self._resume(conn, parsed.after_seq)
        if isinstance(parsed, PermissionFrame):
            return [record_decision(self.states, conn.session_id, parsed)]
        raise AssertionError(f"unhandled frame {parsed!r}")

    def _subscriber(self, conn: Connection, replay_after: int | None = None) -> Subscriber:
        return Subscriber(
            connection_id=conn.connection_id, domain_name=conn.domain_name, stage=conn.stage, replay_after=replay_after
        )

    @staticmethod
    def _rebuilt_state(conn: Connection) -> Callable[[], SessionState]:
        """A session's state from what the connection knows: for one that was never written, or
        one that did not parse (then set aside, see StateStore.update)."""
        return lambda: SessionState(session_id=conn.session_id, user_id=conn.user_id, conversation_id=conn.session_id)

    def _require_model_key(self) -> None:
        if self.settings.agent.anthropic_api_key is None:
            raise AppError(MISSING_KEY, code="anthropic_api_key_missing")

    def _start(self, conn: Connection, start: StartFrame) -> list[dict[str, Any]]:
        self._require_model_key()
        conversation_id = start.conversation_id or conn.session_id
        if not ID_PATTERN.match(conversation_id):
            raise AppError(f"Invalid conversationId {conversation_id!r}.", code="invalid_conversation_id")
        existing = self.conversations.load(conn.user_id, conversation_id)
        messages = (existing[0].get("messages") if existing else None) or []

        def apply(state: SessionState) -> str | None:
            if state.turn_active and state.conversation_id != conversation_id:
                raise Conflict("A turn is running: interrupt it before switching conversations.", code="turn_in_progress")
            state.started = True
            state.model = start.model
            state.max_turns = start.max_turns
            state.options = SessionOptions.from_start(start.system_prompt, start.max_budget_usd, start.allowed_tools,
                                                      start.disallowed_tools)
            state.conversation_id = conversation_id
            state.subscribe(self._subscriber(conn))
            return state.take_repair_notice()

        notice, state = self.states.update(conn.session_id, apply, create=self._rebuilt_state(conn))
        # The original's option names this server does not support, said back, never dropped.
        unsupported: dict[str, Any] = {"unsupportedOptions": start.unsupported_options} if start.unsupported_options else {}
        return [
            *_repaired(notice),
            frame(
                "status",
                status="ready",
                sessionId=conn.session_id,
                conversationId=conversation_id,
                continued=existing is not None,
                messageCount=len(messages) if isinstance(messages, list) else 0,
                model=start.model or "default",
                lastSeq=state.last_seq,
                **unsupported,
            )
        ]

    def _message(self, conn: Connection, message: MessageFrame, prefetched: Versioned | None = None) -> list[dict[str, Any]]:
        """Queue the message (once per `messageId`) and see that a runner will take it."""
        self._require_model_key()
        spent: float | None = None
        if self.quotas is not None:
            spent = self._check_daily_budget(conn.user_id)
            self.quotas.count_message(conn.user_id)
        queued = QueuedPrompt(prompt=message.prompt, max_turns=message.options.max_turns,
                              **({"id": message.message_id} if message.message_id else {}))

        runner_id = uuid.uuid4().hex[:12]
        lease = timedelta(seconds=self.settings.turn_lease_seconds)

        def enqueue(state: SessionState) -> tuple[AcceptedMessage, bool, str | None, bool]:
            notice = state.take_repair_notice()
            earlier = state.accepted_message(queued.id)
            if earlier is not None:
                # A resend, or our own write applied though its response was lost and retried:
                # answered as the first time, and queued once.
                state.subscribe(self._subscriber(conn))
                claimed = _claimed_by(state, runner_id)
                return earlier, _needs_runner(state) or claimed, notice, claimed
            if len(state.queue) >= MAX_QUEUE:
                raise Conflict(
                    f"{MAX_QUEUE} messages are already waiting: wait for a result or interrupt.", code="queue_full"
                )
            state.started = True
            state.queue.append(queued)
            accepted = AcceptedMessage(id=queued.id, position=len(state.queue) - 1 + (1 if state.turn_active else 0))
            state.accepted = [*state.accepted, accepted][-RECENT_MESSAGES:]
            state.subscribe(self._subscriber(conn))
            if state.turn is None:
                # Idle: claim the turn for the runner about to start, in this same write (handoff.py).
                taken = claim_next(state, runner_id, utcnow(), lease)
                return accepted, True, notice, isinstance(taken, TurnRequest)
            # A runner whose lease ran out is dead: the next runner repairs its turn and goes on.
            return accepted, not state.turn_active, notice, False

        try:
            (accepted, needs_runner, notice, claimed), written = self.states.update_versioned(
                conn.session_id, enqueue, create=self._rebuilt_state(conn), known=prefetched)
        except StorageUnavailable as exc:
            return [self._after_failed_enqueue(conn.session_id, queued.id, exc, runner_id)]
        except StorageFull as exc:
            # A refused write wrote nothing: the message is certainly not queued.
            return [error_frame(
                f"Message {queued.id!r} was not queued: storage is full or read-only ({exc}). Free space, then "
                "send it again (with the same messageId).", "storage_full",
            ) | {"messageId": queued.id}]
        handoff = Handoff.of(runner_id, written, spent) if claimed else None
        self._see_it_runs(conn.session_id, written.state, needs_runner, handoff)
        return [*_repaired(notice), frame("status", status="queued", messageId=accepted.id, position=accepted.position)]

    def _see_it_runs(self, session_id: str, state: SessionState, needs_runner: bool, handoff: Handoff | None = None) -> None:
        if needs_runner:
            try:
                self.dispatcher.dispatch(session_id, handoff)
            except AppError:
                if handoff is not None:
                    self._release(session_id, handoff.runner_id)
                raise
        elif state.turn is not None and state.turn.renewal_overdue(self.settings.turn_lease_seconds / 3):
            # It missed a renewal: probably dead. A runner waits its lease out and takes over.
            self._start_runner(session_id)

    def _release(self, session_id: str, runner_id: str) -> None:
        """The runner a claim was made for could not be started: put its message back at the
        head of the queue, so the next frame's runner takes it at once (not after the lease)."""

        def release(state: SessionState) -> None:
            turn = state.turn
            if turn is not None and turn.runner_id == runner_id and turn.prompt is not None:
                state.turn = None
                if all(q.id != turn.prompt.id for q in state.queue):
                    state.queue.insert(0, turn.prompt)

        try:
            self.states.update(session_id, release)
        except AppError as exc:  # the lease runs out and the next runner repairs (and reruns) it
            log.warning("could not release the claim of session %s: %s", session_id, exc.message)

    def _after_failed_enqueue(self, session_id: str, message_id: str, exc: StorageUnavailable,
                              runner_id: str) -> dict[str, Any]:
        """The enqueue's write failed, but it may have landed (a lost response): read the state
        back and answer for certain, starting the runner if it is queued. Never "retry" for a
        message that is in the queue."""
        log.warning("queueing message %s of session %s failed (%s); checking whether it landed", message_id, session_id, exc)
        try:
            found = durably(lambda: self.states.read_versioned(session_id), "checking whether the message was queued")
        except AppError:
            return error_frame(
                f"Storage is failing ({exc}): it is not known whether message {message_id!r} was queued. Send it again "
                "with the same messageId once storage is back: a resend is queued at most once.",
                "storage_unavailable",
            ) | {"messageId": message_id}
        state = found.state if found is not None else None
        accepted = state.accepted_message(message_id) if state is not None else None
        if found is None or state is None or accepted is None:
            return error_frame(
                f"Message {message_id!r} was not queued: storage failed ({exc}). Send it again (with the same messageId).",
                "message_not_queued",
            ) | {"messageId": message_id}
        # Our write landed: when it claimed the turn too, that claim's runner is started here.
        claimed = _claimed_by(state, runner_id)
        self._see_it_runs(session_id, state, _needs_runner(state) or claimed,
                          Handoff.of(runner_id, found) if claimed else None)
        return frame("status", status="queued", messageId=accepted.id, position=accepted.position)

    def _check_daily_budget(self, user_id: str) -> float | None:
        """Refuse a message once the user's day has cost USER_DAILY_BUDGET_USD (`daily_budget_reached`);
        return what the day has cost (None: no daily budget)."""
        assert self.quotas is not None
        budget = self.quotas.limits(user_id).daily_budget_usd
        if budget is None or self.usage is None:
            return None
        spent = self.usage.spent_today(user_id)
        if spent >= budget:
            raise daily_budget_reached(user_id, budget)
        return spent

    def _interrupt(self, conn: Connection) -> list[dict[str, Any]]:
        def flag(state: SessionState) -> int:
            dropped = len(state.queue)
            state.queue = []
            if state.turn is not None:
                state.turn.interrupt = True
            return dropped

        dropped, state = self.states.update(conn.session_id, flag)
        if state.turn is None:
            return [frame("status", status="idle", message="Nothing is running.", droppedQueued=dropped)]
        return [frame("status", status="interrupting", turnId=state.turn.turn_id, droppedQueued=dropped)]

    def _history(self, conn: Connection) -> dict[str, Any]:
        state = self.states.read(conn.session_id)
        conversation_id = state.conversation_id if state else conn.session_id
        existing = self.conversations.load(conn.user_id, conversation_id)
        body = existing[0] if existing else {}
        return frame(
            "history", conversationId=conversation_id, messages=body.get("messages", []), metadata=body.get("metadata", {})
        )

    def _clear(self, conn: Connection) -> list[dict[str, Any]]:
        """Empty the conversation now or, while a turn runs, when it ends: answered at once with
        `status: clearing`, and the turn's runner sends `cleared` (see clearing.py). No frame
        handler waits for a turn: a worker all sessions share is never held."""
        state = self.states.read(conn.session_id)
        if state is not None and state.turn_active:
            if clear_deferred(state, conn.connection_id):
                return [frame("status", status="clearing", message=CLEARING)]  # a repeat: nothing to write
            subscriber = self._subscriber(conn)

            def defer(current: SessionState) -> bool:
                deferred = defer_clear(current)
                if deferred:
                    current.subscribe(subscriber)  # the connection hears `cleared`
                return deferred

            deferred, state = self.states.update(conn.session_id, defer)
            if deferred:
                self._see_it_runs(conn.session_id, state, False)  # a dead runner's turn is taken over
                return [frame("status", status="clearing", message=CLEARING)]
        conversation_id = state.conversation_id if state else conn.session_id
        cleared = empty_conversation(self.conversations, conn.user_id, conversation_id)
        if state is not None and state.remembered_permissions:
            # `clear` starts over: permission answers remembered before it are forgotten too.
            self.states.update(conn.session_id, _forget_permissions)
        return [cleared]

    def _resume(self, conn: Connection, after_seq: int) -> list[dict[str, Any]]:
        def subscribe(state: SessionState) -> tuple[bool, str | None, int, str | None]:
            # A turn still recorded (even one whose runner died) is replayed by the runner that
            # holds or takes it over; only a settled session is replayed from here.
            recorded = state.turn is not None
            if recorded:
                state.subscribe(self._subscriber(conn, replay_after=after_seq))
            else:
                state.subscribe(self._subscriber(conn))
            return recorded, state.last_turn_id, state.last_seq, state.take_repair_notice()

        (running, last_turn_id, last_seq, notice), state = self.states.update(conn.session_id, subscribe,
                                                                              create=self._rebuilt_state(conn))
        if running:
            if state.turn is not None and not state.turn_active:
                self._start_runner(conn.session_id)  # the lease ran out: repair it now
            return _repaired(notice)  # the runner replays, then continues live, in order
        missed = self.events.replay(state, after_seq)
        return [*_repaired(notice), *missed, frame("status", status="resumed", lastSeq=last_seq, replayed=len(missed))]


def _repaired(notice: str | None) -> list[dict[str, Any]]:
    """The `session_repaired` status for a rebuilt state, if this frame's update took the notice."""
    return [frame("status", status="session_repaired", message=notice)] if notice else []


def _session_hint(body: str | None) -> str | None:
    """The `sessionId` a `message` frame names, if any (read before the frame is validated)."""
    if not body or '"sessionId"' not in body:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    hint = parsed.get("sessionId") if isinstance(parsed, dict) and parsed.get("action") == "message" else None
    return hint if isinstance(hint, str) and ID_PATTERN.match(hint) and hint not in (".", "..") else None


def _claimed_by(state: SessionState, runner_id: str) -> bool:
    """Whether the state's turn is a claim made for this runner and not yet started by it."""
    return state.turn is not None and state.turn.runner_id == runner_id and state.turn.prompt is not None


def _needs_runner(state: SessionState) -> bool:
    """Queued work that no live runner holds."""
    return bool(state.queue or state.turn) and not state.turn_active


def _forget_permissions(state: SessionState) -> None:
    state.remembered_permissions = {}


def _note_setup(state: SessionState, index: SkillIndex | None) -> None:
    """Note which /setup built the session's skills (their index itself stays in the session
    record, which the runner reads at turn start).

    A newer index means a /setup since: the permission answers remembered before it end there
    ("remember" lasts for the session's current sandbox)."""
    legacy = state.agent_memory.skill_index if state.agent_memory is not None else None
    known = state.skills_built_at or (legacy.built_at if legacy is not None else None)
    if index is not None and (known is None or known < index.built_at):
        state.skills_built_at = index.built_at
        state.remembered_permissions = {}
    elif state.skills_built_at is None and known is not None:
        state.skills_built_at = known
