"""The turn lease: who may run a session's turn, and the fencing token every runner write carries.

A runner claims the session's turn in `state.json` (a conditional write). Each claim, of a new
turn or of a dead runner's turn to repair, raises the session's `lease_epoch` and stamps it on
the turn. A lease alone does not stop a runner that was paused past it (a GC pause, a frozen
container, a VM migration) from waking up and writing what it had in hand. So every write a
runner makes under its lease is fenced by the epoch:

- writes to `state.json` apply only while the turn there still carries this lease
  (`Lease.require`, inside the If-Match read-modify-write);
- conversation saves carry the epoch in the stored head and are conditional on its ETag; a
  head stamped with a newer epoch of the same session refuses the write
  (`ConversationsService.append`).

A refused write raises `LeaseLost`: the runner stops at once, writes nothing more and logs it.

`claim_next` is the one place the lease changes hands. It is a pure transition on a state
read for a conditional write, so it can be retried when a write's response is lost, and every
outcome has its own name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chalicelib.agent.memory import WorkingContext
from chalicelib.agent.permissions import PendingPermission
from chalicelib.agent.session_options import SessionOptions
from chalicelib.realtime.clearing import take_clear
from chalicelib.realtime.state import SEQ_BLOCK, QueuedPrompt, RunningTurn, SessionState, Subscriber
from chalicelib.services.conversations import Fence, FencedOut


class LeaseLost(FencedOut):
    """A write under a lease another runner has since taken over: refused, nothing written."""

    def __init__(self, lease: Lease, what: str) -> None:
        super().__init__(
            f"Runner {lease.runner_id} lost its lease on turn {lease.turn_id} of session {lease.session_id} "
            f"(epoch {lease.epoch}) and was refused while {what}: another runner owns the session now.",
        )
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    """The fencing token of one claim: a runner may write for this turn while the state shows it."""

    session_id: str
    turn_id: str
    runner_id: str
    epoch: int

    @property
    def fence(self) -> Fence:
        """The token conversation saves carry."""
        return Fence(self.session_id, self.epoch)

    @classmethod
    def of(cls, session_id: str, turn: RunningTurn) -> Lease:
        """The lease a turn in the state records."""
        return cls(session_id, turn.turn_id, turn.runner_id, turn.epoch)

    def holds(self, state: SessionState) -> bool:
        """True while the state's turn is still this claim."""
        turn = state.turn
        return (turn is not None and turn.turn_id == self.turn_id and turn.runner_id == self.runner_id
                and turn.epoch == self.epoch)

    def require(self, state: SessionState, what: str) -> None:
        """Raise LeaseLost unless the state's turn is still this claim (call inside an update)."""
        if not self.holds(state):
            raise LeaseLost(self, what)


@dataclass(frozen=True)
class TurnRequest:
    """Everything a turn needs, captured when the runner claimed it."""

    session_id: str
    user_id: str
    conversation_id: str
    turn_id: str
    prompt: QueuedPrompt
    model: str | None
    max_turns: int | None
    subscribers: list[Subscriber]
    last_seq: int
    last_turn_id: str | None
    lease: Lease
    seq_ceiling: int = 0
    # The working context a state written before it moved to the conversation's metadata held.
    legacy_context: WorkingContext | None = None
    # Which /setup built the session's skills (a cached skill index older than it is not used).
    skills_built_at: datetime | None = None
    # What the client's `start` narrowed for the session (either protocol's option names).
    options: SessionOptions | None = None


@dataclass(frozen=True)
class Recovery:
    """A turn whose runner died (or stalled past its lease), taken over to be repaired."""

    session_id: str
    user_id: str
    conversation_id: str
    dead: RunningTurn
    subscribers: list[Subscriber]
    start_seq: int
    lease: Lease
    # The permission request the dead runner was waiting on, if any.
    pending: PendingPermission | None = None


@dataclass(frozen=True)
class LeaseHeld:
    """Another runner holds a live lease on the session's turn until `until`."""

    until: datetime


@dataclass(frozen=True)
class QueueEmpty:
    """Nothing to run: no turn recorded and no message queued."""


@dataclass(frozen=True)
class ClaimFailed:
    """Storage failed while claiming: the next runner started (or Lambda's retry) claims again."""

    reason: str


Claim = TurnRequest | Recovery | LeaseHeld | QueueEmpty | ClaimFailed


def claim_next(state: SessionState, runner_id: str, now: datetime, lease: timedelta) -> TurnRequest | Recovery | LeaseHeld | QueueEmpty:
    """Take the session's turn if nobody live holds it: our own earlier claim (its write's
    response was lost), a dead runner's turn to repair, or the next queued message."""
    turn = state.turn
    if turn is not None and turn.runner_id == runner_id and turn.prompt is not None and not turn.recovering:
        return _request(state, turn, turn.prompt)
    if turn is not None:
        return take_over(state, runner_id, now, lease)
    if not state.queue:
        return QueueEmpty()
    prompt = state.queue.pop(0)
    start = state.seq_floor
    state.seq_ceiling = start + SEQ_BLOCK
    state.lease_epoch += 1
    state.turn = RunningTurn(
        turn_id=f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", runner_id=runner_id, prompt_id=prompt.id,
        started_at=now, heartbeat_at=now, lease_until=now + lease, prompt=prompt, epoch=state.lease_epoch,
    )
    return _request(state, state.turn, prompt, start)


def take_over(state: SessionState, runner_id: str, now: datetime, lease: timedelta) -> Recovery | LeaseHeld | QueueEmpty:
    """Take a dead runner's turn over to repair it (never a queued message): our own takeover
    whose write's response was lost, or a turn whose lease ran out. QueueEmpty when no turn is
    recorded (what is queued waits for a runner)."""
    turn = state.turn
    if turn is None:
        return QueueEmpty()
    if turn.runner_id == runner_id and turn.recovering:
        return Recovery(state.session_id, state.user_id, state.conversation_id, turn, list(state.subscribers),
                        state.seq_ceiling - SEQ_BLOCK, Lease.of(state.session_id, turn), _pending_of(state, turn.turn_id))
    if not turn.is_stale(now):
        return LeaseHeld(turn.lease_until or (turn.heartbeat_at + lease))
    start = state.seq_floor
    state.seq_ceiling = start + SEQ_BLOCK
    state.lease_epoch += 1
    state.turn = turn.model_copy(update={
        "runner_id": runner_id, "heartbeat_at": now, "lease_until": now + lease, "recovering": True,
        "epoch": state.lease_epoch,
    })
    return Recovery(state.session_id, state.user_id, state.conversation_id, turn, list(state.subscribers), start,
                    Lease.of(state.session_id, state.turn), _pending_of(state, turn.turn_id))


def _request(state: SessionState, turn: RunningTurn, prompt: QueuedPrompt, start: int | None = None) -> TurnRequest:
    first = start if start is not None else state.seq_ceiling - SEQ_BLOCK
    return TurnRequest(
        session_id=state.session_id, user_id=state.user_id, conversation_id=state.conversation_id,
        turn_id=turn.turn_id, prompt=prompt, model=state.model, max_turns=state.max_turns,
        subscribers=list(state.subscribers), last_seq=first, last_turn_id=state.last_turn_id,
        seq_ceiling=state.seq_ceiling,
        legacy_context=state.agent_memory.context if state.agent_memory is not None else None,
        skills_built_at=state.skills_built_at,
        lease=Lease.of(state.session_id, turn), options=state.options,
    )


def _pending_of(state: SessionState, turn_id: str) -> PendingPermission | None:
    pending = state.pending_permission
    return pending if pending is not None and pending.turn_id == turn_id else None


@dataclass(frozen=True)
class Finished:
    """What recording a turn's end found: who to serve its last events, and whether the turn
    before it left event-log chunks to prune."""

    subscribers: list[Subscriber]
    prune: bool
    #: A `clear` waited for this turn's end (taken in the same write: see clearing.py).
    clear: bool = False


def finish(state: SessionState, lease: Lease, *, seq: int, tail: list[dict[str, Any]] | None, logged: bool,
           requeue: QueuedPrompt | None = None) -> Finished:
    """Record the end of the lease's turn (fenced: LeaseLost once another runner holds it).

    `tail` is the turn's events not in its event log (kept in the state for a resume; None:
    all are logged), `logged` whether the turn wrote log chunks; `requeue` a prompt to run again."""
    lease.require(state, "recording the end of the turn")
    prune = state.last_turn_logged and state.last_turn_id not in (None, lease.turn_id)
    clear = take_clear(state)
    state.last_seq = max(state.last_seq, seq)
    state.turn = None
    state.last_turn_id = lease.turn_id
    state.last_events = tail
    state.last_turn_logged = logged
    # Everything up to seq is accounted for; the next turn numbers on from there.
    state.seq_ceiling = seq
    # The agent's memory moved out of the state: a state written before drops it here.
    state.agent_memory = None
    if state.pending_permission is not None and state.pending_permission.turn_id == lease.turn_id:
        # Its runner died waiting (or could not close it): nobody waits for an answer now,
        # so a `permission` frame for it is refused instead of acknowledged.
        state.pending_permission = None
    if requeue is not None and all(q.id != requeue.id for q in state.queue):
        state.queue.insert(0, requeue)
    return Finished(list(state.subscribers), prune, clear)
