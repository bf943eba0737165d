"""The turn runner: takes queued messages of a session one at a time and runs the agent.

It runs outside the websocket handlers (its own Lambda in AWS, a worker locally), so a turn
may last far longer than API Gateway's 29-second limit. One runner owns a session's turn at a
time, under a lease in the session state (claimed and renewed with If-Match). A runner that
dies (kill -9, a crash, Lambda's time limit) stops renewing; the next runner to look (started
by a connect, a resume, a message, or Lambda's retry of the dead invocation) waits the lease
out, repairs the dead turn (an unanswered tool call gets an `is_error` result saying the turn
was cut off, a prompt that was never saved runs again), tells the client, and moves the queue on.

Storage failures during a turn are retried with backoff; when storage stays down the turn
ends with an `error` and a conversation whose tool calls are all answered.

The pieces live apart: the lease and its transitions (and the fencing token every write
carries) in `lease.py`, the polling and renewal during a turn in `watcher.py`, the
conversation's reads and fenced saves in `transcript.py`. A runner that finds it lost its
lease (it was paused past it and another took over) stops and writes nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from chalicelib.agent.memory import AgentMemory
from chalicelib.config import Settings
from chalicelib.errors import AppError
from chalicelib.realtime.clearing import empty_conversation, take_clear
from chalicelib.realtime.durable import durably
from chalicelib.realtime.event_log import EventLog
from chalicelib.realtime.lease import (
    ClaimFailed,
    Lease,
    LeaseHeld,
    QueueEmpty,
    Recovery,
    TurnRequest,
    claim_next,
    take_over,
)
from chalicelib.realtime.permissions import PermissionDesk
from chalicelib.realtime.protocol import error_frame
from chalicelib.realtime.recovery import answer_cut_off_calls
from chalicelib.realtime.sandbox_guard import RecoveringSandbox
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import SEQ_BLOCK, QueuedPrompt, SessionState, StateStore, Subscriber, utcnow
from chalicelib.realtime.stream import TurnStream
from chalicelib.realtime.transcript import Transcript
from chalicelib.realtime.watcher import TurnWatcher
from chalicelib.sandbox.base import Sandbox, SandboxError, SandboxGone
from chalicelib.services.conversations import ConversationsService, ConversationUnreadable, FencedOut
from chalicelib.services.sessions import SessionsService
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots
from chalicelib.telemetry import log_context, turn_metrics
from chalicelib.telemetry.turn_metrics import TurnMetrics

log = logging.getLogger(__name__)

MAX_TURNS_PER_INVOCATION = 50


# The agent, as the runner sees it: run one user prompt to completion, emitting events,
# saving messages through `on_messages_changed`, and stopping when `should_stop()` is true.
AgentTurn = Callable[..., Any]


class TurnRunner:
    """Runs a session's queued turns until the queue is empty (or time runs short)."""

    def __init__(
        self,
        settings: Settings,
        states: StateStore,
        events: EventLog,
        sessions: SessionsService,
        conversations: ConversationsService,
        sender: Sender,
        agent_turn: AgentTurn,
        *,
        poll_interval: float = 0.5,
        snapshots: WorkspaceSnapshots | None = None,
    ) -> None:
        self.settings = settings
        self.states = states
        self.events = events
        self.sessions = sessions
        self.conversations = conversations
        self.sender = sender
        self.agent_turn = agent_turn
        self.poll_interval = poll_interval
        self.lease = timedelta(seconds=settings.turn_lease_seconds)
        self.renew_every = settings.turn_lease_seconds / 3
        self.snapshots = snapshots
        # Sessions whose workspace save was put off because another message was queued behind
        # (or whose turn was repaired after its runner died before saving).
        self._unsaved: dict[str, str] = {}
        self._unsaved_lock = threading.Lock()

    def run(self, session_id: str, time_left: Callable[[], float] | None = None, reinvoke: Callable[[], None] | None = None) -> int:
        """Run queued turns; return how many ran. Hands over to a fresh invocation (`reinvoke`)
        when less than five minutes remain, so a queue never outlives a Lambda.

        When another runner holds the turn, wait once for its lease to run out: if it was
        renewed meanwhile that runner is alive and will take the queue on; if not, it died."""
        runner_id = uuid.uuid4().hex[:12]
        ran = 0
        waited = False
        for _ in range(MAX_TURNS_PER_INVOCATION):
            if ran and time_left is not None and time_left() < 300:
                if reinvoke is not None:
                    reinvoke()
                return ran
            claim = self._claim(session_id, runner_id)
            if isinstance(claim, LeaseHeld):
                if waited:
                    return ran
                waited = True
                remaining = (claim.until - utcnow()).total_seconds()
                time.sleep(min(max(remaining, 0.0) + 0.2, self.lease.total_seconds() + 1))
                continue
            if isinstance(claim, QueueEmpty):
                self._save_put_off(session_id)
                return ran
            if isinstance(claim, ClaimFailed):
                return ran
            if isinstance(claim, Recovery):
                if not self._recover(claim):
                    return ran  # storage is failing: the lease runs out and the next runner retries
                continue
            recorded = self._run_one(claim)
            ran += 1
            if not recorded:
                # Its end could not be recorded (or its lease was lost), so the state may still
                # show it running: claiming again would take it for our own lost claim and run it
                # twice. The lease runs out and the next runner closes it (it finds the logged result).
                return ran
        if reinvoke is not None:
            reinvoke()
        return ran

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
        return "repaired" if self._recover(taken, gave_up=why) else "failed"

    # -- claiming and finishing -------------------------------------------------------------

    def _claim(self, session_id: str, runner_id: str) -> TurnRequest | Recovery | LeaseHeld | QueueEmpty | ClaimFailed:
        try:
            request, _ = durably(
                lambda: self.states.update(session_id, lambda state: claim_next(state, runner_id, utcnow(), self.lease)),
                "claiming the next turn",
            )
        except AppError as exc:
            log.error("cannot claim a turn for session %s: %s", session_id, exc.message)
            return ClaimFailed(exc.message)
        return request

    def _finish(self, lease: Lease, stream: TurnStream, requeue: QueuedPrompt | None = None) -> None:
        """Record the end of the turn (fenced: a runner that lost its lease records nothing)."""

        def finish(state: SessionState) -> tuple[list[Subscriber], bool]:
            lease.require(state, "recording the end of the turn")
            state.last_seq = max(state.last_seq, stream.seq)
            state.last_turn_id = lease.turn_id
            # Everything up to stream.seq is accounted for; the next turn numbers on from there.
            state.seq_ceiling = stream.seq
            if state.pending_permission is not None and state.pending_permission.turn_id == lease.turn_id:
                # Its runner died waiting (or could not close it): nobody waits for an answer now,
                # so a `permission` frame for it is refused instead of acknowledged.
                state.pending_permission = None
            if requeue is not None and all(q.id != requeue.id for q in state.queue):
                state.queue.insert(0, requeue)
            clear = take_clear(state)
            state.turn = None
            return list(state.subscribers), clear

        (subscribers, clear), state = durably(lambda: self.states.update(lease.session_id, finish),
                                              "recording the end of the turn")
        # A resume that raced the end of the turn is ours to serve: it saw the turn running.
        self._follow(stream, subscribers)
        if clear:
            self._clear_after_turn(state, subscribers)

    def _clear_after_turn(self, state: SessionState, subscribers: list[Subscriber]) -> None:
        """The `clear` asked for while the turn ran (see clearing.py), done before the next turn."""
        try:
            cleared = durably(lambda: empty_conversation(self.conversations, state.user_id, state.conversation_id),
                              "clearing the conversation")
        except AppError as exc:
            # The turn's end is recorded: only the clear failed, and the client can send it again.
            log.error("clearing the conversation of session %s after its turn failed: %s", state.session_id, exc.message)
            cleared = error_frame(f"The conversation could not be cleared ({exc.message}): send `clear` again.",
                                  "clear_failed")
        for subscriber in subscribers:
            self.sender.send(subscriber.connection_id, cleared)

    def _follow(self, stream: TurnStream, subscribers: list[Subscriber]) -> None:
        """Send the turn's events to these connections (all of one API Gateway stage)."""
        if subscribers:
            self.sender.configure(subscribers[0].domain_name, subscribers[0].stage)
        stream.follow(subscribers)

    def _flush_events(self, session_id: str, turn_id: str, stream: TurnStream) -> None:
        chunk = stream.peek_unflushed()
        if chunk:
            durably(lambda: self.events.append(session_id, turn_id, chunk), "saving the turn's events")
            stream.mark_flushed(len(chunk))

    def _holds(self, lease: Lease) -> bool:
        """Whether the stored state still shows this lease (read before the turn's last writes,
        which are not conditional on the state: the event log and the workspace snapshot)."""
        state = durably(lambda: self.states.read(lease.session_id), "checking the turn's lease")
        return state is not None and lease.holds(state)

    @staticmethod
    def _log_lost(lease: Lease, exc: Exception | None = None) -> None:
        log.warning("runner %s lost its lease on turn %s of session %s (epoch %d): another runner took the session "
                    "over; this one stops and writes nothing more%s", lease.runner_id, lease.turn_id, lease.session_id,
                    lease.epoch, f" ({exc})" if exc is not None else "")

    # -- a dead runner's turn -----------------------------------------------------------------

    def _recover(self, rec: Recovery, gave_up: str | None = None) -> bool:
        """Repair a turn whose runner died: answer its cut-off tool calls, tell the client, and
        run its prompt again if it was never saved, unless `gave_up` says why its runner failed
        for good. False when storage failed on the way."""
        with log_context.bound(sessionId=rec.session_id, turnId=rec.dead.turn_id, userId=rec.user_id):
            return self._repair(rec, gave_up)

    def _repair(self, rec: Recovery, gave_up: str | None) -> bool:
        dead = rec.dead
        log.warning("turn %s of session %s lost its runner (lease ran out at %s); repairing it",
                    dead.turn_id, rec.session_id, dead.lease_until)
        stream = TurnStream(
            self.sender, rec.start_seq, None,
            earlier_events=lambda after: self.events.read(rec.session_id, dead.turn_id, after),
            ceiling=rec.start_seq + SEQ_BLOCK,
        )
        self._follow(stream, rec.subscribers)
        requeue: QueuedPrompt | None = None
        try:
            logged = durably(lambda: self.events.read(rec.session_id, dead.turn_id, 0), "reading the turn's events")
            if any(e.get("event") in ("result", "error") for e in logged):
                # The turn had ended (a result, or the error that ended it); only recording that
                # failed (storage was down). Nothing to repair.
                self._finish(rec.lease, stream)
                return True
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
            if not prompt_saved and dead.prompt is not None and gave_up is None:
                requeue = dead.prompt
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
                    + ("Your message had not been read yet: it runs again now." if requeue is not None else
                       f"{kept}: send a message to continue."),
                    "turn_cut_off",
                ))
            stream.emit(_cut_short_result(dead.started_at, turns=0))
            self._flush_events(rec.session_id, dead.turn_id, stream)
            self._finish(rec.lease, stream, requeue)
            # The dead runner never saved the files its turn made: save them once the queue is empty.
            with self._unsaved_lock:
                self._unsaved[rec.session_id] = rec.user_id
            return True
        except FencedOut as exc:
            self._log_lost(rec.lease, exc)
            return False
        except Exception:  # noqa: BLE001 - the lease runs out again and the next runner retries the repair
            log.exception("repairing turn %s of session %s failed", dead.turn_id, rec.session_id)
            return False
        finally:
            stream.close()

    # -- one turn ----------------------------------------------------------------------------

    def _run_one(self, request: TurnRequest) -> bool:
        """Run one claimed turn; return whether its end was recorded in the session state."""
        with log_context.bound(sessionId=request.session_id, turnId=request.turn_id, userId=request.user_id):
            log.info("turn started")
            recorded = self._run_measured(request)
            log.info("turn ended%s", "" if recorded else " (its end not recorded)")
            return recorded

    def _run_measured(self, request: TurnRequest) -> bool:
        metrics = TurnMetrics(request.session_id, request.turn_id) if turn_metrics.enabled() else None
        stream = TurnStream(
            self.sender,
            request.last_seq,
            None,
            earlier_events=lambda after: self.events.read(request.session_id, request.last_turn_id, after)
            if request.last_turn_id
            else [],
            ceiling=request.seq_ceiling,
            observer=metrics.observe if metrics is not None else None,
        )
        try:
            return self._run_streamed(request, stream)
        finally:
            if metrics is not None:
                metrics.publish()

    def _run_streamed(self, request: TurnRequest, stream: TurnStream) -> bool:
        lease = request.lease
        self._follow(stream, request.subscribers)
        watcher = TurnWatcher(self.states, lease, stream, lease_duration=self.lease, renew_every=self.renew_every,
                              poll_interval=self.poll_interval,
                              on_subscribers=lambda subscribers: self._follow(stream, subscribers))
        watcher.start()
        transcript = Transcript(self.conversations, request.user_id, request.conversation_id, lease.fence)
        started = utcnow()
        lost = False
        try:
            self._turn(request, stream, watcher, transcript)
        except FencedOut as exc:
            lost = True
            self._log_lost(lease, exc)
        except Exception as exc:  # noqa: BLE001 - the turn ends with an error event, the runner lives
            log.exception("turn %s of session %s failed", request.turn_id, request.session_id)
            message = exc.message if isinstance(exc, AppError) else f"The turn failed on the server ({type(exc).__name__})."
            code = exc.code if isinstance(exc, AppError) else "turn_failed"
            try:
                stream.emit(error_frame(message, code))
                self._save_cut_off(transcript, stream, request.prompt.id)
            except FencedOut as fenced:
                lost = True
                self._log_lost(lease, fenced)
            except Exception:  # noqa: BLE001 - the lease runs out and the next runner repairs the turn
                log.exception("saving what turn %s had said failed", request.turn_id)
            if not lost:
                # Clients wait for `result` to end a turn, as after the agent's own errors (also
                # when saving failed: the error says so, and the client must not wait on).
                stream.emit(_cut_short_result(started, turns=transcript.replies()))
        finally:
            watcher.stop()
            recorded = False
            try:
                if not lost and (watcher.lost.is_set() or not self._holds(lease)):
                    lost = True
                    self._log_lost(lease)
                if not lost:
                    self._save_workspace(request, stream, watcher)
                    try:
                        self._flush_events(request.session_id, request.turn_id, stream)
                    except AppError as exc:
                        # The client had them live; ending the turn matters more than its log.
                        log.error("turn %s of session %s: its last events were not logged: %s",
                                  request.turn_id, request.session_id, exc.message)
                    self._finish(lease, stream)
                    recorded = True
                    self.events.prune(request.session_id, {request.turn_id})
            except FencedOut as exc:
                self._log_lost(lease, exc)
            except Exception:  # noqa: BLE001
                log.exception("finishing turn %s of session %s failed", request.turn_id, request.session_id)
            finally:
                stream.close()
        return recorded

    def _save_cut_off(self, transcript: Transcript, stream: TurnStream, prompt_id: str) -> None:
        """After a failure, save the messages the turn had (its last save may have failed),
        with every unanswered tool call answered as cut off, so the next turn can go on."""
        if transcript.latest is None:
            return
        messages, added = answer_cut_off_calls(transcript.latest)
        for block in added:
            stream.emit({"event": "tool_result", "tool_use_id": block["tool_use_id"], "content": block["content"], "is_error": True})
        if added or not transcript.saved:
            # One attempt: the error is out already, and if storage is still down the lease runs
            # out and the next runner (or the next turn) repairs the stored conversation instead.
            transcript.save(messages, prompt_id=prompt_id, retry=False)

    def _turn(self, request: TurnRequest, stream: TurnStream, watcher: TurnWatcher, transcript: Transcript) -> None:
        stream.emit({"event": "status", "status": "running", "turnId": request.turn_id, "messageId": request.prompt.id})
        sandbox = RecoveringSandbox(self._sandbox(request, stream), lambda: self._recreate_sandbox(request, stream))
        history = transcript.load()
        metadata = transcript.metadata
        metadata.setdefault("startedAt", utcnow().isoformat())
        metadata.update({"sessionId": request.session_id, "userId": request.user_id})

        def save(messages: list[dict[str, Any]]) -> None:
            # Recovery after a crash runs the prompt again only if it was never saved.
            transcript.save(messages, prompt_id=request.prompt.id)
            self._flush_events(request.session_id, request.turn_id, stream)

        self.agent_turn(
            session_id=request.session_id,
            user_id=request.user_id,
            prompt=request.prompt.prompt,
            prompt_id=request.prompt.id,
            history=history,
            model=request.model,
            max_turns=request.prompt.max_turns or request.max_turns,
            sandbox=sandbox,
            emit=stream.emit,
            should_stop=watcher.interrupted.is_set,
            on_messages_changed=save,
            metadata=metadata,
            memory=request.agent_memory or AgentMemory(),
            conversation_id=request.conversation_id,
            save_memory=lambda memory: self._save_memory(request.lease, memory),
            ask_permission=PermissionDesk(
                self.states, request.session_id, request.turn_id, stream.emit, watcher.interrupted.is_set,
                timeout_seconds=self.settings.agent.permission_timeout_seconds, poll_seconds=self.poll_interval,
                lease=request.lease,
            ).ask,
            durable=durably,
            options=request.options,
        )

    def _save_workspace(self, request: TurnRequest, stream: TurnStream, watcher: TurnWatcher) -> None:
        """Snapshot the workspace after the turn, unless another message waits (a burst saves once,
        at its end). Runs while the watcher still renews the lease, so no other runner works in
        the sandbox meanwhile; a runner whose turn was taken over leaves the save to the new owner."""
        if self.snapshots is None:
            return
        if watcher.lost.is_set():
            return
        if watcher.queued_behind > 0:
            with self._unsaved_lock:
                self._unsaved[request.session_id] = request.user_id
            return
        with self._unsaved_lock:
            self._unsaved.pop(request.session_id, None)
        try:
            self._save_snapshot(request.session_id, request.user_id)
        except SandboxGone:
            pass  # the turn never got a sandbox; the last snapshot stands
        except Exception as exc:  # noqa: BLE001 - the turn is over; its result stands, the client is told
            log.exception("saving the workspace of session %s failed", request.session_id)
            reason = exc.message if isinstance(exc, AppError) else f"{type(exc).__name__}: {exc}"
            stream.emit({
                "event": "status", "status": "workspace_save_failed",
                "code": exc.code if isinstance(exc, AppError) else "workspace_snapshot_failed",
                "message": f"The workspace could not be saved ({reason}). The last snapshot stands; the workspace "
                           "is saved again after the next turn.",
            })

    def _save_put_off(self, session_id: str) -> None:
        """The queue emptied without the last turn saving (its followers were interrupted, or a
        dead runner's turn was repaired): save now."""
        with self._unsaved_lock:
            user_id = self._unsaved.pop(session_id, None)
        if user_id is None or self.snapshots is None:
            return
        try:
            self._save_snapshot(session_id, user_id)
        except SandboxGone:
            pass  # nothing live to save; the last snapshot stands
        except Exception:  # noqa: BLE001 - the next turn saves again
            log.exception("saving the workspace of session %s failed", session_id)

    def _save_snapshot(self, session_id: str, user_id: str) -> None:
        """One save, its storage calls retried through an outage like the turn's other writes."""
        snapshots = self.snapshots
        if snapshots is None:
            return
        sandbox = self.sessions.sandbox_for(session_id)
        durably(lambda: snapshots.save(session_id, user_id, sandbox), "saving the workspace snapshot")

    def _save_memory(self, lease: Lease, memory: AgentMemory) -> None:
        """Keep the agent's skill index and working context for the session's next message.
        Fenced: a runner whose turn was taken over (it stalled past its lease) must not put
        back a working context that describes the conversation as it left it."""

        def keep(state: SessionState) -> None:
            lease.require(state, "saving the agent's working context")
            state.agent_memory = memory.model_copy(deep=True)

        durably(lambda: self.states.update(lease.session_id, keep), "saving the agent's working context")

    def _sandbox(self, request: TurnRequest, stream: TurnStream) -> Sandbox:
        """The session's sandbox; if it went away, a fresh one with the skills loaded again."""
        try:
            return self.sessions.sandbox_for(request.session_id)
        except SandboxGone:
            return self._recreate_sandbox(request, stream)
        except SandboxError as exc:
            raise AppError(f"The sandbox is unavailable: {exc}. Retry shortly.", code="sandbox_unavailable") from exc

    def _recreate_sandbox(self, request: TurnRequest, stream: TurnStream) -> Sandbox:
        reloaded = self.sessions.reload_skills(request.session_id, request.user_id)
        stream.emit(
            {
                "event": "status",
                "status": "sandbox_recreated",
                "message": "The sandbox had gone away (idle timeout, host restart, its folder deleted or a move to "
                "another host); a new one was prepared, its files were restored from the last snapshot and the "
                "skills were loaded again.",
                "skillsLoaded": reloaded.skills,
            }
        )
        if reloaded.not_restored is not None:
            stream.emit({"event": "status", "status": "workspace_not_restored", "message": reloaded.not_restored})
        if reloaded.lost_save is not None:
            stream.emit({"event": "status", "status": "workspace_save_failed", "code": "workspace_not_saved_before_reaping",
                         "message": reloaded.lost_save})
        return self.sessions.sandbox_for(request.session_id)


def _cut_short_result(started: datetime, *, turns: int) -> dict[str, Any]:
    """The `result` of a turn that ended on an error outside the agent loop (or was cut off):
    usage and cost are not known there."""
    return {
        "event": "result", "turns": turns, "durationMs": int((utcnow() - started).total_seconds() * 1000),
        "usage": {"inputTokens": 0, "outputTokens": 0, "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0},
        "costUsd": None, "model": None, "stopReason": "error", "interrupted": False,
    }
