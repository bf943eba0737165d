"""The turn runner: takes queued messages of a session one at a time and runs the agent.

It runs outside the websocket handlers (its own Lambda in AWS, a worker locally), so a turn
may last far longer than API Gateway's 29-second limit. One runner owns a session's turn at a
time, under a lease in the session state. Read top to bottom, a turn is:

1. **claim** — handed over by the edge that queued the message (handoff.py: no storage call),
   or claimed from the stored state (lease.py: `claim_next`, one conditional write). A dead
   runner's turn is repaired instead (repair.py) and the queue moves on;
2. **start** — the conversation, the user's settings and the skill index read at once
   (turn_start.py), then the model request;
3. **run** — the agent streams its events to every subscriber (stream.py), saving the
   conversation as turn_saves.py says, while the watcher (watcher.py) renews the lease and
   notices interrupts, new tabs and takeovers;
4. **end** — the workspace snapshot if the turn changed it (deferred_snapshots.py), then one
   conditional write records the end of the turn with its last events (`lease.finish`).

Every write under the lease is fenced: the state's by `Lease.require` inside its If-Match
write, the conversation's by the epoch in its head. A runner that finds it lost its lease (it
was paused past it and another took over) stops and writes nothing more. Storage failures are
retried with backoff (durable.py); when storage stays down the turn ends with an `error`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from chalicelib.config import Settings
from chalicelib.errors import AppError
from chalicelib.realtime.agent_memory import TurnMemory
from chalicelib.realtime.clearing import clear_after_turn
from chalicelib.realtime.deferred_snapshots import DeferredSnapshots, snapshot_failed
from chalicelib.realtime.durable import durably
from chalicelib.realtime.event_log import EventLog, TurnLog
from chalicelib.realtime.handoff import Handoff
from chalicelib.realtime.lease import (
    ClaimFailed,
    Lease,
    LeaseHeld,
    QueueEmpty,
    Recovery,
    TurnRequest,
    claim_next,
    finish,
)
from chalicelib.realtime.permissions import PermissionDesk
from chalicelib.realtime.protocol import cut_short_result, error_frame
from chalicelib.realtime.repair import TurnRepair, log_lost
from chalicelib.realtime.sandbox_guard import RecoveringSandbox, open_sandbox
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import StateCursor, StateStore, Versioned, utcnow
from chalicelib.realtime.stream import TurnStream, serve
from chalicelib.realtime.transcript import Transcript
from chalicelib.realtime.turn_saves import TurnSaves
from chalicelib.realtime.turn_start import read_inputs
from chalicelib.realtime.watcher import TurnWatcher
from chalicelib.services.conversations import ConversationsService, FencedOut
from chalicelib.services.sessions import SessionsService
from chalicelib.services.skill_index import SkillIndex
from chalicelib.services.user_settings import UserSettings
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots
from chalicelib.telemetry import log_context, turn_metrics
from chalicelib.telemetry.turn_metrics import TurnMetrics

log = logging.getLogger(__name__)

RERUN = ("The server running this message stopped before its answer was saved (crash, restart or time "
         "limit): it runs again, and this answer replaces what streamed before the stop.")

MAX_TURNS_PER_INVOCATION = 50
#: The most a turn's last events may take in the state (serialised); more go to its event log.
INLINE_EVENTS_BYTES = 16_000

# The agent, as the runner sees it: run one user prompt to completion, emitting events,
# saving messages through `on_messages_changed`, and stopping when `should_stop()` is true.
AgentTurn = Callable[..., Any]
# How one turn went: its end recorded, not recorded (storage failed or the lease was lost), or
# never started because the handoff it came with was stale (the prompt had been saved already).
Outcome = Literal["recorded", "unrecorded", "stale"]


class _StaleHandoff(Exception):
    """The conversation already holds the handed prompt: this invocation is a retry."""


class TurnRunner:
    """Runs a session's queued turns until the queue is empty (or time runs short)."""

    def __init__(self, settings: Settings, states: StateStore, events: EventLog, sessions: SessionsService,
                 conversations: ConversationsService, sender: Sender, agent_turn: AgentTurn, *,
                 poll_interval: float = 0.5, snapshots: WorkspaceSnapshots | None = None,
                 read_settings: Callable[[str], UserSettings] | None = None) -> None:
        self.settings = settings
        self.states = states
        self.events = events
        self.sessions = sessions
        self.conversations = conversations
        self.sender = sender
        self.agent_turn = agent_turn
        self.poll_interval = poll_interval
        self.read_settings = read_settings
        self.lease = timedelta(seconds=settings.turn_lease_seconds)
        self.renew_every = settings.turn_lease_seconds / 3
        self.snapshots = DeferredSnapshots(snapshots, sessions.sandbox_for)
        self.repairs = TurnRepair(states, events, conversations, sender, self.snapshots, self.lease)

    def run(self, session_id: str, time_left: Callable[[], float] | None = None, reinvoke: Callable[[], None] | None = None,
            handoff: Handoff | None = None) -> int:
        """Run queued turns; return how many ran. Hands over to a fresh invocation (`reinvoke`)
        when less than five minutes remain, so a queue never outlives a Lambda.

        When another runner holds the turn, wait once for its lease to run out: if it was
        renewed meanwhile that runner is alive and will take the queue on; if not, it died."""
        handed = self._take(handoff)
        runner_id = handoff.runner_id if handed is not None and handoff is not None else uuid.uuid4().hex[:12]
        ran = 0
        waited = False
        # The state as this runner's last write left it: the next claim starts from it.
        last: Versioned | None = None
        for _ in range(MAX_TURNS_PER_INVOCATION):
            if ran and time_left is not None and time_left() < 300:
                if reinvoke is not None:
                    reinvoke()
                return ran
            claim, known = handed if handed is not None else self._claim(session_id, runner_id, last)
            last = None
            if isinstance(claim, LeaseHeld):
                if waited:
                    return ran
                waited = True
                remaining = (claim.until - utcnow()).total_seconds()
                time.sleep(min(max(remaining, 0.0) + 0.2, self.lease.total_seconds() + 1))
                continue
            if isinstance(claim, QueueEmpty):
                self.snapshots.save_put_off(session_id)
                return ran
            if isinstance(claim, ClaimFailed):
                return ran
            if isinstance(claim, Recovery):
                if not self.repairs.repair(claim):
                    return ran  # storage is failing: the lease runs out and the next runner retries
                continue
            outcome, last = self._run_one(claim, known, handed=handoff if handed is not None else None)
            if outcome == "stale":
                # A retried invocation: claim as a new runner (the turn it names is waited out and repaired).
                handed, runner_id = None, uuid.uuid4().hex[:12]
                continue
            handed = None
            ran += 1
            if outcome == "unrecorded":
                # Its end could not be recorded (or its lease was lost), so the state may still
                # show it running: claiming again would take it for our own lost claim and run it
                # twice. The lease runs out and the next runner closes it (it finds the logged result).
                return ran
        if reinvoke is not None:
            reinvoke()
        return ran

    def give_up(self, session_id: str, why: str) -> str:
        """The runner's invocation for this session failed for good: see `TurnRepair.give_up`."""
        return self.repairs.give_up(session_id, why)

    # -- claiming -----------------------------------------------------------------------------

    def _take(self, handoff: Handoff | None) -> tuple[TurnRequest, Versioned] | None:
        """The turn the edge claimed for this invocation, while the handoff is fresh."""
        if handoff is None:
            return None
        if not handoff.fresh(self.settings.turn_lease_seconds):
            log.info("turn handoff from %s is stale; claiming from the stored state", handoff.claimed_at)
            return None
        claim = claim_next(handoff.state.model_copy(deep=True), handoff.runner_id, utcnow(), self.lease)
        return (claim, handoff.versioned) if isinstance(claim, TurnRequest) else None

    def _claim(self, session_id: str, runner_id: str, known: Versioned | None
               ) -> tuple[TurnRequest | Recovery | LeaseHeld | QueueEmpty | ClaimFailed, Versioned | None]:
        """Claim the next turn (one conditional write; none when there is nothing to take).

        `known` is the state as this runner's last turn ended it: a message queued before that
        write is in it, and one queued after it found no turn and was claimed by its edge (see
        handoff.py), so an empty queue there needs no read."""
        try:
            claim, written = durably(
                lambda: self.states.update_versioned(
                    session_id, lambda state: claim_next(state, runner_id, utcnow(), self.lease), known=known,
                    write_if=lambda taken: not isinstance(taken, (QueueEmpty, LeaseHeld))),
                "claiming the next turn",
            )
        except AppError as exc:
            log.error("cannot claim a turn for session %s: %s", session_id, exc.message)
            return ClaimFailed(exc.message), None
        return claim, written

    # -- one turn -----------------------------------------------------------------------------

    def _run_one(self, request: TurnRequest, known: Versioned | None, *, handed: Handoff | None
                 ) -> tuple[Outcome, Versioned | None]:
        """Run one claimed turn; return how it went and the state as its last write left it."""
        with log_context.bound(sessionId=request.session_id, turnId=request.turn_id, userId=request.user_id):
            log.info("turn started")
            metrics = TurnMetrics(request.session_id, request.turn_id) if turn_metrics.enabled() else None
            before = known.state if known is not None else None
            stream = TurnStream(
                self.sender, request.last_seq, None,
                earlier_events=lambda after: self.events.replay(before, after) if before is not None else [],
                ceiling=request.seq_ceiling, observer=metrics.observe if metrics is not None else None,
            )
            cursor = StateCursor(self.states, request.session_id, known)
            try:
                outcome = self._run_streamed(request, cursor, stream, handed)
            finally:
                if metrics is not None:
                    metrics.publish()
            log.info("turn ended%s", {"recorded": "", "unrecorded": " (its end not recorded)",
                                      "stale": " (a stale handoff: not run)"}[outcome])
            return outcome, cursor.known if outcome == "recorded" else None

    def _run_streamed(self, request: TurnRequest, cursor: StateCursor, stream: TurnStream, handed: Handoff | None) -> Outcome:
        lease = request.lease
        serve(stream, request.subscribers)
        watcher = TurnWatcher(cursor, lease, stream, lease_duration=self.lease, renew_every=self.renew_every,
                              poll_interval=self.poll_interval, on_subscribers=lambda subscribers: serve(stream, subscribers))
        watcher.start()
        transcript = Transcript(self.conversations, request.user_id, request.conversation_id, lease.fence)
        turn_log = TurnLog(self.events, request.session_id, request.turn_id, stream)
        saves = TurnSaves(transcript, request.prompt.id, turn_log.flush)
        sandboxes: list[RecoveringSandbox] = []
        started = utcnow()
        lost = False
        try:
            self._turn(request, cursor, stream, watcher, transcript, saves, sandboxes, handed)
        except _StaleHandoff:
            watcher.stop()
            stream.close()
            return "stale"
        except FencedOut as exc:
            lost = True
            log_lost(lease, exc)
        except Exception as exc:  # noqa: BLE001 - the turn ends with an error event, the runner lives
            log.exception("turn %s of session %s failed", request.turn_id, request.session_id)
            message = exc.message if isinstance(exc, AppError) else f"The turn failed on the server ({type(exc).__name__})."
            code = exc.code if isinstance(exc, AppError) else "turn_failed"
            try:
                stream.emit(error_frame(message, code))
                saves.save_cut_off(stream.emit)
            except FencedOut as fenced:
                lost = True
                log_lost(lease, fenced)
            except Exception:  # noqa: BLE001 - the lease runs out and the next runner repairs the turn
                log.exception("saving what turn %s had said failed", request.turn_id)
            if not lost:
                # Clients wait for `result` to end a turn, as after the agent's own errors (also
                # when saving failed: the error says so, and the client must not wait on).
                stream.emit(cut_short_result(started, turns=transcript.replies()))
        finally:
            watcher.stop()
        try:
            return self._end(request, cursor, stream, watcher, turn_log, sandboxes, lost)
        finally:
            stream.close()

    def _turn(self, request: TurnRequest, cursor: StateCursor, stream: TurnStream, watcher: TurnWatcher, transcript: Transcript,
              saves: TurnSaves, sandboxes: list[RecoveringSandbox], handed: Handoff | None) -> None:
        inputs = read_inputs(transcript, session_id=request.session_id, user_id=request.user_id,
                             read_settings=self.read_settings, read_skill_index=self._skill_index,
                             skills_built_at=request.skills_built_at)
        if handed is not None and transcript.metadata.get("lastPromptId") == request.prompt.id:
            raise _StaleHandoff
        stream.emit({"event": "status", "status": "running", "turnId": request.turn_id, "messageId": request.prompt.id})
        if request.prompt.rerun:
            stream.emit({"event": "status", "status": "rerun", "messageId": request.prompt.id, "message": RERUN})
        sandbox = open_sandbox(self.sessions, request.session_id, request.user_id, stream.emit)
        sandboxes.append(sandbox)
        metadata = transcript.metadata
        metadata.setdefault("startedAt", utcnow().isoformat())
        metadata.update({"sessionId": request.session_id, "userId": request.user_id})
        memory = TurnMemory(request.session_id, metadata, inputs.skill_index, request.legacy_context)
        self.agent_turn(
            session_id=request.session_id, user_id=request.user_id, prompt=request.prompt.prompt,
            prompt_id=request.prompt.id, history=inputs.history, model=request.model,
            max_turns=request.prompt.max_turns or request.max_turns, sandbox=sandbox, emit=stream.emit,
            should_stop=watcher.interrupted.is_set, on_messages_changed=saves.changed, metadata=metadata,
            memory=memory.memory, conversation_id=request.conversation_id, save_memory=memory.keep,
            ask_permission=PermissionDesk(
                self.states, request.session_id, request.turn_id, stream.emit, watcher.interrupted.is_set,
                timeout_seconds=self.settings.agent.permission_timeout_seconds, poll_seconds=self.poll_interval,
                lease=request.lease, cursor=cursor,
            ).ask,
            durable=durably, options=request.options, prefs=inputs.prefs, turn_id=request.turn_id,
            spent_today=handed.spent_today if handed is not None else None,
        )
        saves.settle()

    def _end(self, request: TurnRequest, cursor: StateCursor, stream: TurnStream, watcher: TurnWatcher,
             turn_log: TurnLog, sandboxes: list[RecoveringSandbox], lost: bool) -> Outcome:
        """Snapshot the workspace if the turn changed it, then record the end of the turn with
        its last events in one fenced write. Nothing at all once the lease is lost."""
        lease = request.lease
        changed = any(s.changed for s in sandboxes)
        try:
            if not lost and watcher.lost.is_set():
                lost = True
            if not lost and self.snapshots.will_save(request.session_id, changed=changed, queued_behind=watcher.queued_behind):
                # The snapshot is not conditional on the state: confirm the lease before it.
                lost = not self._still_holds(lease, cursor)
            if lost:
                log_lost(lease)
                return "unrecorded"
            failure = self.snapshots.after_turn(request.session_id, request.user_id, changed=changed,
                                                queued_behind=watcher.queued_behind)
            if failure is not None:
                stream.emit(snapshot_failed(failure))
            tail = stream.peek_unflushed()
            if len(json.dumps(tail, default=str)) > INLINE_EVENTS_BYTES:
                if not self._still_holds(lease, cursor):
                    log_lost(lease)
                    return "unrecorded"
                try:
                    turn_log.flush()
                except AppError as exc:
                    # The client had them live; ending the turn matters more than its log.
                    log.error("turn %s of session %s: its last events were not logged: %s",
                              request.turn_id, request.session_id, exc.message)
                tail = []
            ended, _ = durably(lambda: cursor.update(lambda s: finish(
                s, lease, seq=stream.seq, tail=tail or None, logged=turn_log.logged)), "recording the end of the turn")
            stream.mark_flushed(len(tail))
            # A resume that raced the end of the turn is ours to serve: it saw the turn running.
            serve(stream, ended.subscribers)
            if ended.prune:
                self.events.prune(request.session_id, {request.turn_id})
            if ended.clear:
                clear_after_turn(self.conversations, self.sender, session_id=request.session_id, user_id=request.user_id,
                                 conversation_id=request.conversation_id, subscribers=ended.subscribers)
            return "recorded"
        except FencedOut as exc:
            log_lost(lease, exc)
        except Exception:  # noqa: BLE001 - the lease runs out and the next runner closes the turn
            log.exception("finishing turn %s of session %s failed", request.turn_id, request.session_id)
            try:
                turn_log.flush()  # so the runner that closes it finds its result
            except Exception:  # noqa: BLE001 - storage is down: the repair tells the client
                log.warning("the last events of turn %s were not logged either", request.turn_id)
        return "unrecorded"

    def _still_holds(self, lease: Lease, cursor: StateCursor) -> bool:
        """Whether the lease still holds, before a write that is not conditional on the state.

        Known without a read while the lease, as last written, has at least a third of its
        length to run: no other runner can take a turn over before its lease ran out. Otherwise
        (a runner paused past it wakes up here) the state is read."""
        known = cursor.known
        turn = known.state.turn if known is not None else None
        if known is not None and turn is not None and lease.holds(known.state) and turn.lease_until is not None \
                and utcnow() < turn.lease_until - self.lease / 3:
            return True
        state = durably(cursor.refresh, "checking the turn's lease")
        return state is not None and lease.holds(state)

    # -- the skill index ---------------------------------------------------------------------

    def _skill_index(self, session_id: str) -> SkillIndex | None:
        record = self.sessions.find_record(session_id)
        return record.skill_index if record is not None else None
