"""The live state of a session, shared by the websocket handlers and the turn runner.

Handlers and the runner run in different processes (different Lambdas in AWS), so the state
lives in one object, `sessions/{sessionId}/state.json`, and every change is a read-modify-write
guarded by If-Match. Whoever loses a race re-reads and re-applies its change, so a message
queued while a turn finishes, or a resume racing the end of a turn, is never lost.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pydantic import Field, ValidationError, model_validator

from chalicelib.agent.memory import AgentMemory
from chalicelib.agent.permissions import Decision, PendingPermission
from chalicelib.agent.session_options import SessionOptions
from chalicelib.errors import Conflict
from chalicelib.services.models import ApiModel
from chalicelib.storage import ObjectNotFound, ObjectStore, PreconditionFailed, layout
from chalicelib.storage.base import get_many
from chalicelib.storage.quarantine import set_aside

T = TypeVar("T")

STATE_RECORD = "state.json"
MAX_QUEUE = 20
# Only for states written before leases existed: a turn without `lease_until` is dead after this.
STALE_AFTER = timedelta(seconds=90)
#: How many seq numbers a runner may hand out beyond the mark it last wrote (see SessionState.seq_ceiling).
SEQ_BLOCK = 10_000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class QueuedPrompt(ApiModel):
    """A user message waiting for its turn."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    prompt: str
    max_turns: int | None = None
    queued_at: datetime = Field(default_factory=utcnow)
    #: Queued again by the repair of a turn cut off before its answer was saved: the new turn
    #: says so in its own events, so a client that reconnects after the repair still hears it.
    rerun: bool = False


#: The most connections served at once per session; the oldest is dropped for a new one.
MAX_SUBSCRIBERS = 16
#: How many recent message ids a session remembers, so a resend is recognised after its message ran.
RECENT_MESSAGES = 100


class AcceptedMessage(ApiModel):
    """A message the session queued: its id and the position its `queued` answer gave."""

    id: str
    position: int


class RunningTurn(ApiModel):
    """The turn a runner is executing now, held under a lease the runner keeps renewing."""

    turn_id: str
    runner_id: str
    prompt_id: str
    started_at: datetime
    heartbeat_at: datetime
    interrupt: bool = False
    # Until when the runner is presumed alive; it renews this every third of the lease. A
    # runner that dies (kill -9, Lambda's time limit, a crash) stops renewing, and whoever
    # sees the lease expired repairs the turn and moves the queue on.
    lease_until: datetime | None = None
    # The message being answered, so a turn cut off before it saved the prompt runs again.
    prompt: QueuedPrompt | None = None
    # Set while a runner repairs a dead turn (the repair is idempotent, so it can be redone).
    recovering: bool = False
    # The fencing token of the claim (SessionState.lease_epoch when it was made): see lease.py.
    epoch: int = 0

    def is_stale(self, now: datetime | None = None) -> bool:
        """A runner that stopped renewing its lease (killed, crashed, cut off from storage)."""
        now = now or utcnow()
        if self.lease_until is None:
            return now - self.heartbeat_at > STALE_AFTER
        return now > self.lease_until

    def renewal_overdue(self, renew_every: float, now: datetime | None = None) -> bool:
        """True when the runner missed a renewal: probably dead, though its lease has not run out."""
        return ((now or utcnow()) - self.heartbeat_at).total_seconds() > 2 * renew_every


class Subscriber(ApiModel):
    """The connection that receives the session's turn events.

    `replay_after` is set by `resume`: before sending anything live to this connection, the
    runner sends the events with a greater seq, so the client sees each event once, in order.
    """

    connection_id: str
    domain_name: str
    stage: str
    replay_after: int | None = None
    nonce: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])


class SessionState(ApiModel):
    """Everything about a session that changes while it is used."""

    session_id: str
    user_id: str
    started: bool = False
    model: str | None = None
    max_turns: int | None = None
    # The other options of the last `start` that apply here (system prompt, budget, tools).
    options: SessionOptions | None = None
    conversation_id: str
    # Every connection that receives the session's events (several tabs), oldest first.
    subscribers: list[Subscriber] = Field(default_factory=list)
    turn: RunningTurn | None = None
    queue: list[QueuedPrompt] = Field(default_factory=list)
    # The messages queued lately (newest last, at most RECENT_MESSAGES), queued or run since:
    # a `message` frame resent with one of these ids is answered as the first one was.
    accepted: list[AcceptedMessage] = Field(default_factory=list)
    last_seq: int = 0
    last_turn_id: str | None = None
    # The session's seq high-water mark: no event was ever numbered above it. A runner raises
    # it before numbering past it, so a turn taken over after a crash starts above every seq
    # the dead runner may have sent, and `seq` never goes back within a session.
    seq_ceiling: int = 0
    # Raised by every claim of the turn (see lease.py): the fencing token runner writes carry.
    lease_epoch: int = 0
    # Read only (states written before the agent's memory moved out): the skill index now comes
    # from the session record and the working context lives in the conversation's metadata, so
    # the state stays a few KB at any skill count. Never written back (`exclude`).
    agent_memory: AgentMemory | None = Field(default=None, exclude=True)
    # When the skill index the session's permission answers were remembered under was built
    # (the /setup that made the sandbox): a newer /setup forgets them.
    skills_built_at: datetime | None = None
    # The last turn's events not in its event log (`events/{turnId}/`), kept with the write that
    # ended it: a plain message writes no log object. None: read the log alone.
    last_events: list[dict[str, Any]] | None = None
    # Whether the last turn wrote chunks to its event log (True for states written before: the
    # next finish then prunes by listing once).
    last_turn_logged: bool = True
    # A tool call waiting for the user's approval, and the answers they asked to remember.
    pending_permission: PendingPermission | None = None
    remembered_permissions: dict[str, Decision] = Field(default_factory=dict)
    # Set when an unreadable state was rebuilt: the next client frame is told (`session_repaired`).
    repaired: str | None = None
    # A `clear` that arrived while this turn (its id) ran: the turn's runner empties the
    # conversation when the turn ends and sends `cleared`, so no frame handler waits for a turn.
    clear_after_turn: str | None = None
    # The websocket connections open on the session (ids), counted at $connect against
    # WS_CONNECTIONS_PER_SESSION by this object's conditional writes, so every Lambda counts alike.
    connections: list[str] = Field(default_factory=list)
    updated_at: datetime = Field(default_factory=utcnow)

    def take_repair_notice(self) -> str | None:
        """The rebuild's notice, once: the caller tells the client and the write clears it."""
        notice, self.repaired = self.repaired, None
        return notice

    @property
    def turn_active(self) -> bool:
        return self.turn is not None and not self.turn.is_stale()

    @model_validator(mode="before")
    @classmethod
    def _one_subscriber_before(cls, data: Any) -> Any:
        """States written before every tab got the events held one `subscriber`."""
        if isinstance(data, dict) and "subscriber" in data:
            data = dict(data)
            old = data.pop("subscriber")
            if old is not None and not data.get("subscribers"):
                data["subscribers"] = [old]
        return data

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a connection. One already subscribed keeps its stream, unless it resumes
        (`replay_after`): then it is served again from its own afterSeq, the others untouched."""
        if subscriber.replay_after is None and any(s.connection_id == subscriber.connection_id for s in self.subscribers):
            return
        others = [s for s in self.subscribers if s.connection_id != subscriber.connection_id]
        self.subscribers = [*others, subscriber][-MAX_SUBSCRIBERS:]

    def unsubscribe(self, connection_id: str) -> None:
        """Forget a connection that went away."""
        self.subscribers = [s for s in self.subscribers if s.connection_id != connection_id]

    def accepted_message(self, message_id: str) -> AcceptedMessage | None:
        """The earlier acceptance of this message id, if the session remembers one."""
        return next((m for m in self.accepted if m.id == message_id), None)

    def holds_message(self, message_id: str) -> bool:
        """Whether the message is queued or being answered now."""
        return any(q.id == message_id for q in self.queue) or (self.turn is not None and self.turn.prompt_id == message_id)

    @property
    def seq_floor(self) -> int:
        """Where the next runner starts numbering: above anything ever sent."""
        return max(self.seq_ceiling, self.last_seq)


@dataclass(frozen=True)
class Versioned:
    """A state as stored under one ETag."""

    state: SessionState
    etag: str


class StateStore:
    """Conditional read-modify-write of `sessions/{id}/state.json`."""

    def __init__(self, store: ObjectStore, max_attempts: int = 8) -> None:
        self.store = store
        self.max_attempts = max_attempts

    def read(self, session_id: str) -> SessionState | None:
        """The current state, or None before the first connection (or when it does not parse:
        the next update that can rebuild it does)."""
        found = self._read(session_id)
        return found[0] if found else None

    def read_versioned(self, session_id: str) -> Versioned | None:
        """The current state with its ETag (None: none, or it does not parse)."""
        found = self._read(session_id)
        return Versioned(found[0], found[1]) if found is not None and found[0] is not None else None

    def etag(self, session_id: str) -> str | None:
        """The stored state's ETag, by a HEAD (no body read); None when there is none."""
        try:
            return self.store.head(layout.session_key(session_id, STATE_RECORD)).etag
        except ObjectNotFound:
            return None

    def update(
        self,
        session_id: str,
        mutate: Callable[[SessionState], T],
        *,
        create: Callable[[], SessionState] | None = None,
    ) -> tuple[T, SessionState]:
        """Apply `mutate` to a fresh copy and write it back with If-Match, retrying on races.

        `mutate` may be called several times (once per attempt), so it must only change the
        state it is given. When no state exists, `create` makes the initial one.
        """
        result, written = self.update_versioned(session_id, mutate, create=create)
        return result, written.state

    def update_versioned(
        self,
        session_id: str,
        mutate: Callable[[SessionState], T],
        *,
        create: Callable[[], SessionState] | None = None,
        known: Versioned | None = None,
        write_if: Callable[[T], bool] | None = None,
    ) -> tuple[T, Versioned]:
        """`update`, returning the state written with its new ETag. With `known` (a state and
        the ETag it was read or written under), the first attempt writes on it without reading:
        one PUT when nothing changed since, a read and a retry when something did. When
        `write_if(result)` is false nothing is written (the state as found is returned)."""
        key = layout.session_key(session_id, STATE_RECORD)
        for attempt in range(self.max_attempts):
            found: tuple[SessionState | None, str, bytes] | None
            if attempt == 0 and known is not None:
                found = (known.state.model_copy(deep=True), known.etag, b"")
            else:
                found = self._read(session_id)
            if found is None or found[0] is None:
                if create is None:
                    raise Conflict(
                        f"Session {session_id!r} has no live state"
                        + (" (it was unreadable)" if found is not None else "") + ": connect to the websocket first.",
                        code="session_not_connected",
                    )
                state, etag = create(), found[1] if found is not None else None
                if found is not None:
                    # Unparseable: kept under corrupt/ and rebuilt from what the caller knows (the
                    # session's owner and id), replacing exactly the object that was read.
                    aside = set_aside(self.store, key, found[2], "it does not parse as a session state")
                    state.repaired = (f"The session's live state was unreadable and has been rebuilt (kept as {aside}): "
                                      "messages queued before, and the running turn if any, are not known. "
                                      "The conversation is intact; send your message again if it has no answer.")
            else:
                state, etag = found[0], found[1]
            if write_if is not None and etag is not None:
                unchanged = state.model_copy(deep=True)
                result = mutate(state)
                if not write_if(result):
                    return result, Versioned(unchanged, etag)
            else:
                result = mutate(state)
            state.updated_at = utcnow()
            try:
                info = self.store.put(
                    key,
                    state.model_dump_json(by_alias=True).encode(),
                    content_type="application/json",
                    if_match=etag,
                    if_none_match=etag is None,
                )
            except PreconditionFailed:
                continue
            return result, Versioned(state, info.etag)
        raise Conflict(
            f"Session {session_id!r} is changing too fast to update; retry.", code="state_contention"
        )

    def sessions_with_work(self) -> list[str]:
        """Sessions whose state records a turn or queued messages (one LIST per 1,000 sessions,
        then their states in parallel): what a restarted local server must pick up."""
        ids: list[str] = []
        token: str | None = None
        while True:
            page = self.store.list(layout.SESSIONS, delimiter="/", continuation_token=token)
            ids += [prefix[len(layout.SESSIONS):].rstrip("/") for prefix in page.prefixes]
            token = page.next_token
            if token is None:
                break
        found = get_many(self.store, [layout.session_key(i, STATE_RECORD) for i in ids])
        busy = []
        for session_id in ids:
            stored = found.get(layout.session_key(session_id, STATE_RECORD))
            try:
                state = SessionState.model_validate_json(stored.body) if stored is not None else None
            except ValidationError:
                state = None
            if state is not None and (state.turn is not None or state.queue):
                busy.append(session_id)
        return busy

    def _read(self, session_id: str) -> tuple[SessionState | None, str, bytes] | None:
        """(state, etag, bytes); state None when it does not parse; None when there is none."""
        try:
            stored = self.store.get(layout.session_key(session_id, STATE_RECORD))
        except ObjectNotFound:
            return None
        try:
            return SessionState.model_validate_json(stored.body), stored.info.etag, stored.body
        except ValidationError:
            return None, stored.info.etag, stored.body


class StateCursor:
    """A runner's latest knowledge of its session's state and its ETag, shared by the turn and
    its watcher: writes start from it (no read when nothing changed since), and a poll reads
    the body only when a HEAD says the ETag moved."""

    def __init__(self, states: StateStore, session_id: str, known: Versioned | None) -> None:
        self.states = states
        self.session_id = session_id
        self._known = known
        self._lock = threading.Lock()
        #: Bytes of state bodies read by `refresh` (the benchmark's figure for polling).
        self.bytes_read = 0

    @property
    def known(self) -> Versioned | None:
        with self._lock:
            return self._known

    def _keep(self, versioned: Versioned | None) -> None:
        with self._lock:
            self._known = versioned

    def update(self, mutate: Callable[[SessionState], T]) -> tuple[T, SessionState]:
        """A conditional read-modify-write starting from what is known."""
        result, written = self.states.update_versioned(self.session_id, mutate, known=self.known)
        self._keep(written)
        return result, written.state

    def refresh(self) -> SessionState | None:
        """The current state: a HEAD, and a GET only when its ETag is not the known one.
        None when the state is gone (or does not parse)."""
        known = self.known
        etag = self.states.etag(self.session_id)
        if etag is None:
            self._keep(None)
            return None
        if known is not None and known.etag == etag:
            return known.state
        found = self.states._read(self.session_id)
        if found is None or found[0] is None:
            self._keep(None)
            return None
        self.bytes_read += len(found[2])
        self._keep(Versioned(found[0], found[1]))
        return found[0]
