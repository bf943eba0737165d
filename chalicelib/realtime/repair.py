"""Repairing a turn whose runner died (or stalled past its lease), taken over by another runner.

Its unanswered tool calls get an `is_error` result saying the turn was cut off (the Messages
API refuses a history with one), the conversation is saved under the new lease's epoch (which
fences off the old runner should it only have been paused), the client is told, and the prompt
runs again if the conversation never got it, unless the runner failed for good (`gave_up`):
then its prompt may be what makes it fail, and the client is asked to send it again.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from chalicelib.errors import AppError
from chalicelib.realtime.clearing import clear_after_turn
from chalicelib.realtime.deferred_snapshots import DeferredSnapshots
from chalicelib.realtime.durable import durably
from chalicelib.realtime.event_log import EventLog
from chalicelib.realtime.lease import Lease, LeaseHeld, QueueEmpty, Recovery, finish, take_over
from chalicelib.realtime.protocol import cut_short_result, error_frame
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import SEQ_BLOCK, QueuedPrompt, StateStore, utcnow
from chalicelib.realtime.stream import TurnStream, serve
from chalicelib.realtime.transcript import Transcript
from chalicelib.services.conversations import ConversationsService, ConversationUnreadable, FencedOut
from chalicelib.telemetry import log_context

log = logging.getLogger(__name__)


def log_lost(lease: Lease, exc: Exception | None = None) -> None:
    """Say that a runner lost its lease and stops (the one log line of every refused write)."""
    log.warning("runner %s lost its lease on turn %s of session %s (epoch %d): another runner took the session "
                "over; this one stops and writes nothing more%s", lease.runner_id, lease.turn_id, lease.session_id,
                lease.epoch, f" ({exc})" if exc is not None else "")


class TurnRepair:
    """Repairs dead turns of any session."""

    def __init__(self, states: StateStore, events: EventLog, conversations: ConversationsService, sender: Sender,
                 snapshots: DeferredSnapshots, lease: timedelta) -> None:
        self.states = states
        self.events = events
        self.conversations = conversations
        self.sender = sender
        self.snapshots = snapshots
        self.lease = lease

    def give_up(self, session_id: str, why: str) -> str:
        """The runner's invocation for this session failed for good (Lambda's retries ran out and
        its on-failure destination says so): repair the turn it left, as a takeover would, but do
        not run its prompt again (it may be what makes the runner fail), and tell the client.

        Returns "repaired"; "running" when a live runner holds the turn (a later invocation took
        over: nothing to repair); "idle" when no turn is open (the queue, if any, runs at the next
        message or connect); "failed" when storage failed on the way (the message is retried)."""
        runner_id = uuid.uuid4().hex[:12]
        try:
            known = durably(lambda: self.states.read(session_id), "reading the session state")
        except AppError as exc:
            log.error("cannot read the state of session %s: %s", session_id, exc.message)
            return "failed"
        # Decided on a read first: a live or absent turn is left as it is, unwritten.
        if known is None or known.turn is None:
            return "idle"
        if not known.turn.is_stale(utcnow()):
            return "running"
        try:
            taken, _ = durably(
                lambda: self.states.update(session_id, lambda state: take_over(state, runner_id, utcnow(), self.lease)),
                "taking over the failed turn",
            )
        except AppError as exc:
            log.error("cannot take over the failed turn of session %s: %s", session_id, exc.message)
            return "failed"
        if isinstance(taken, QueueEmpty):
            return "idle"
        if isinstance(taken, LeaseHeld):
            return "running"
        return "repaired" if self.repair(taken, gave_up=why) else "failed"

    def repair(self, rec: Recovery, gave_up: str | None = None) -> bool:
        """Repair the taken-over turn; False when storage failed on the way (the lease runs out
        again and the next runner retries: every step is idempotent)."""
        with log_context.bound(sessionId=rec.session_id, turnId=rec.dead.turn_id, userId=rec.user_id):
            dead = rec.dead
            log.warning("turn %s of session %s lost its runner (lease ran out at %s); repairing it",
                        dead.turn_id, rec.session_id, dead.lease_until)
            stream = TurnStream(
                self.sender, rec.start_seq, None,
                earlier_events=lambda after: self.events.read(rec.session_id, dead.turn_id, after),
                ceiling=rec.start_seq + SEQ_BLOCK,
            )
            serve(stream, rec.subscribers)
            try:
                self._repair(rec, gave_up, stream)
                return True
            except FencedOut as exc:
                log_lost(rec.lease, exc)
                return False
            except Exception:  # noqa: BLE001 - the lease runs out again and the next runner retries the repair
                log.exception("repairing turn %s of session %s failed", dead.turn_id, rec.session_id)
                return False
            finally:
                stream.close()

    def _repair(self, rec: Recovery, gave_up: str | None, stream: TurnStream) -> None:
        dead = rec.dead
        logged = durably(lambda: self.events.read(rec.session_id, dead.turn_id, 0), "reading the turn's events")
        if any(e.get("event") in ("result", "error") for e in logged):
            # The turn had ended (a result, or the error that ended it); only recording that
            # failed (storage was down). Nothing to repair.
            self._end(rec, stream, None)
            return
        transcript = Transcript(self.conversations, rec.user_id, rec.conversation_id, rec.lease.fence)
        try:
            messages = transcript.load()
        except ConversationUnreadable as exc:
            # Kept as it is (never overwritten): the turn is closed, the client told why.
            stream.emit(error_frame(exc.message, exc.code))
            messages = None
        added = transcript.repaired
        if messages is not None and transcript.exists:
            # Saved even with nothing to add: the head then carries this epoch, which fences
            # off the runner we took over should it only have been paused.
            transcript.save(messages)
        if rec.pending is not None:
            stream.emit({"event": "permission_resolved", "toolUseId": rec.pending.tool_use_id, "name": rec.pending.name,
                         "decision": "deny", "reason": "turn_cut_off"})
        for block in added:
            stream.emit({"event": "tool_result", "tool_use_id": block["tool_use_id"], "content": block["content"], "is_error": True})
        prompt_saved = transcript.metadata.get("lastPromptId") == dead.prompt_id
        requeue = (dead.prompt.model_copy(update={"rerun": True})
                   if not prompt_saved and dead.prompt is not None and gave_up is None else None)
        kept = "What was said is kept" + (" and the unfinished tool call was marked as failed" if added else "")
        if gave_up is not None:
            stream.emit(error_frame(
                f"The server could not run this turn: its runner failed every attempt ({gave_up}). "
                + (f"{kept}: send a message to continue." if prompt_saved else
                   "Your message was not run: send it again, or change it if it keeps failing."),
                "turn_failed",
            ))
        else:
            stream.emit(error_frame(
                "The server running this turn stopped before it finished (crash, restart or time limit). "
                + ("Its answer had not been saved yet: your message runs again now (what streamed before the stop is superseded)." if requeue is not None else
                   f"{kept}: send a message to continue."),
                "turn_cut_off",
            ))
        stream.emit(cut_short_result(dead.started_at, turns=0))
        chunk = stream.peek_unflushed()
        if chunk:
            durably(lambda: self.events.append(rec.session_id, dead.turn_id, chunk), "saving the turn's events")
            stream.mark_flushed(len(chunk))
        self._end(rec, stream, requeue)
        # The dead runner never saved the files its turn made: save them once the queue is empty.
        self.snapshots.put_off(rec.session_id, rec.user_id)

    def _end(self, rec: Recovery, stream: TurnStream, requeue: QueuedPrompt | None) -> None:
        """Close the repaired turn (fenced); its log holds every event (logged=True)."""
        ended, _ = durably(lambda: self.states.update(rec.session_id, lambda s: finish(
            s, rec.lease, seq=stream.seq, tail=None, logged=True, requeue=requeue)), "recording the end of the turn")
        # A resume that raced the end of the turn is ours to serve: it saw the turn running.
        serve(stream, ended.subscribers)
        if ended.prune:  # the turn before left its log: this one's replaces it for a resume
            self.events.prune(rec.session_id, {rec.dead.turn_id})
        if ended.clear:
            clear_after_turn(self.conversations, self.sender, session_id=rec.session_id, user_id=rec.user_id,
                             conversation_id=rec.conversation_id, subscribers=ended.subscribers)
