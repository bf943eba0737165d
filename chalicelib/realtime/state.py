"""The live state of a session, shared by the websocket handlers and the turn runner.

Handlers and the runner run in different processes (different Lambdas in AWS), so the state
lives in one object, `sessions/{sessionId}/state.json`, and every change is a read-modify-write
guarded by If-Match. Whoever loses a race re-reads and re-applies its change, so a message
queued while a turn finishes, or a resume racing the end of a turn, is never lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from pydantic import Field, ValidationError

from chalicelib.agent.memory import AgentMemory
from chalicelib.agent.permissions import Decision, PendingPermission
from chalicelib.errors import Conflict
from chalicelib.services.models import ApiModel
from chalicelib.storage import ObjectNotFound, ObjectStore, PreconditionFailed, layout

T = TypeVar("T")

STATE_RECORD = "state.json"
MAX_QUEUE = 20
STALE_AFTER = timedelta(seconds=90)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class QueuedPrompt(ApiModel):
    """A user message waiting for its turn."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    prompt: str
    max_turns: int | None = None
    queued_at: datetime = Field(default_factory=utcnow)


class RunningTurn(ApiModel):
    """The turn a runner is executing now."""

    turn_id: str
    runner_id: str
    prompt_id: str
    started_at: datetime
    heartbeat_at: datetime
    interrupt: bool = False

    def is_stale(self, now: datetime | None = None) -> bool:
        """A runner that stopped heartbeating (killed at Lambda's time limit, crashed)."""
        return (now or utcnow()) - self.heartbeat_at > STALE_AFTER


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
    conversation_id: str
    subscriber: Subscriber | None = None
    turn: RunningTurn | None = None
    queue: list[QueuedPrompt] = Field(default_factory=list)
    last_seq: int = 0
    last_turn_id: str | None = None
    # The skill index and the working context (summary + recent messages) of the agent.
    agent_memory: AgentMemory = Field(default_factory=AgentMemory)
    # A tool call waiting for the user's approval, and the answers they asked to remember.
    pending_permission: PendingPermission | None = None
    remembered_permissions: dict[str, Decision] = Field(default_factory=dict)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def turn_active(self) -> bool:
        return self.turn is not None and not self.turn.is_stale()


class StateStore:
    """Conditional read-modify-write of `sessions/{id}/state.json`."""

    def __init__(self, store: ObjectStore, max_attempts: int = 8) -> None:
        self.store = store
        self.max_attempts = max_attempts

    def read(self, session_id: str) -> SessionState | None:
        """The current state, or None before the first connection."""
        found = self._read(session_id)
        return found[0] if found else None

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
        key = layout.session_key(session_id, STATE_RECORD)
        for _ in range(self.max_attempts):
            found = self._read(session_id)
            if found is None:
                if create is None:
                    raise Conflict(
                        f"Session {session_id!r} has no live state: connect to the websocket first.",
                        code="session_not_connected",
                    )
                state, etag = create(), None
            else:
                state, etag = found
            result = mutate(state)
            state.updated_at = utcnow()
            try:
                self.store.put(
                    key,
                    state.model_dump_json(by_alias=True).encode(),
                    content_type="application/json",
                    if_match=etag,
                    if_none_match=etag is None,
                )
            except PreconditionFailed:
                continue
            return result, state
        raise Conflict(
            f"Session {session_id!r} is changing too fast to update; retry.", code="state_contention"
        )

    def _read(self, session_id: str) -> tuple[SessionState, str] | None:
        try:
            stored = self.store.get(layout.session_key(session_id, STATE_RECORD))
        except ObjectNotFound:
            return None
        try:
            return SessionState.model_validate_json(stored.body), stored.info.etag
        except ValidationError:
            # An unreadable state is replaced rather than wedging the session forever.
            return None
