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
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chalicelib.agent.memory import AgentMemory
from chalicelib.agent.permissions import PendingPermission
from chalicelib.config import Settings
from chalicelib.errors import AppError
from chalicelib.realtime.durable import durably
from chalicelib.realtime.event_log import EventLog
from chalicelib.realtime.permissions import PermissionDesk
from chalicelib.realtime.protocol import error_frame
from chalicelib.realtime.recovery import answer_cut_off_calls
from chalicelib.realtime.sandbox_guard import RecoveringSandbox
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import (
    SEQ_BLOCK,
    QueuedPrompt,
    RunningTurn,
    SessionState,
    StateStore,
    Subscriber,
    utcnow,
)
from chalicelib.realtime.stream import TurnStream
from chalicelib.sandbox.base import Sandbox, SandboxError, SandboxGone
from chalicelib.services.conversations import ConversationsService
from chalicelib.services.sessions import SessionsService
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots

log = logging.getLogger(__name__)

MAX_TURNS_PER_INVOCATION = 50


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
    subscriber: Subscriber | None
    last_seq: int
    last_turn_id: str | None
    seq_ceiling: int = 0
    agent_memory: AgentMemory | None = None


@dataclass(frozen=True)
class _LeaseHeld:
    """Another runner holds a live lease on the session's turn until `until`."""

    until: datetime


@dataclass(frozen=True)
class _Recovery:
    """A turn whose runner died, taken over by this runner to be repaired."""

    session_id: str
    user_id: str
    conversation_id: str
    dead: RunningTurn
    subscriber: Subscriber | None
    start_seq: int
    # The permission request the dead runner was waiting on, if any.
    pending: PendingPermission | None = None


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
            if isinstance(claim, _LeaseHeld):
                if waited:
                    return ran
                waited = True
                remaining = (claim.until - utcnow()).total_seconds()
                time.sleep(min(max(remaining, 0.0) + 0.2, self.lease.total_seconds() + 1))
                continue
            if claim is None:
                self._save_put_off(session_id)
                return ran
            if isinstance(claim, _Recovery):
                if not self._recover(claim, runner_id):
                    return ran  # storage is failing: the lease runs out and the next runner retries
                continue
            recorded = self._run_one(claim, runner_id)
            ran += 1
            if not recorded:
                # Its end could not be recorded, so the state still shows it running: claiming
                # again would take it for our own lost claim and run it twice. The lease runs
                # out and the next runner closes it (it finds the logged result).
                return ran
        if reinvoke is not None:
            reinvoke()
        return ran

    # -- claiming and finishing -------------------------------------------------------------

    def _claim(self, session_id: str, runner_id: str) -> TurnRequest | _Recovery | _LeaseHeld | None:
        def claim(state: SessionState) -> TurnRequest | _Recovery | _LeaseHeld | None:
            now = utcnow()
            turn = state.turn
            if turn is not None and turn.runner_id == runner_id and turn.recovering:
                # Our own takeover, written though its response was lost and the write retried.
                return _Recovery(session_id, state.user_id, state.conversation_id, turn, state.subscriber,
                                 state.seq_ceiling - SEQ_BLOCK, _pending_of(state, turn.turn_id))
            if turn is not None and turn.runner_id == runner_id and turn.prompt is not None:
                # Our own claim, written though its response was lost and the write retried.
                return self._request(state, turn, turn.prompt)
            if turn is not None and turn.runner_id != runner_id:
                if not turn.is_stale(now):
                    return _LeaseHeld(turn.lease_until or (turn.heartbeat_at + self.lease))
                start = state.seq_floor
                state.seq_ceiling = start + SEQ_BLOCK
                state.turn = turn.model_copy(update={
                    "runner_id": runner_id, "heartbeat_at": now, "lease_until": now + self.lease, "recovering": True,
                })
                return _Recovery(session_id, state.user_id, state.conversation_id, turn, state.subscriber, start,
                                 _pending_of(state, turn.turn_id))
            if not state.queue:
                state.turn = None
                return None
            prompt = state.queue.pop(0)
            turn_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            start = state.seq_floor
            state.seq_ceiling = start + SEQ_BLOCK
            state.turn = RunningTurn(
                turn_id=turn_id, runner_id=runner_id, prompt_id=prompt.id, started_at=now, heartbeat_at=now,
                lease_until=now + self.lease, prompt=prompt,
            )
            return self._request(state, state.turn, prompt, start)

        try:
            request, _ = durably(lambda: self.states.update(session_id, claim), "claiming the next turn")
        except AppError as exc:
            log.error("cannot claim a turn for session %s: %s", session_id, exc.message)
            return None
        return request

    @staticmethod
    def _request(state: SessionState, turn: RunningTurn, prompt: QueuedPrompt, start: int | None = None) -> TurnRequest:
        first = start if start is not None else state.seq_ceiling - SEQ_BLOCK
        return TurnRequest(
            session_id=state.session_id, user_id=state.user_id, conversation_id=state.conversation_id,
            turn_id=turn.turn_id, prompt=prompt, model=state.model, max_turns=state.max_turns,
            subscriber=state.subscriber, last_seq=first, last_turn_id=state.last_turn_id,
            seq_ceiling=state.seq_ceiling, agent_memory=state.agent_memory.model_copy(deep=True),
        )

    def _finish(self, session_id: str, turn_id: str, runner_id: str, stream: TurnStream,
                requeue: QueuedPrompt | None = None) -> None:
        def finish(state: SessionState) -> Subscriber | None:
            ours = state.turn is not None and state.turn.runner_id == runner_id and state.turn.turn_id == turn_id
            state.last_seq = max(state.last_seq, stream.seq)
            if ours:
                state.turn = None
                state.last_turn_id = turn_id
                # Everything up to stream.seq is accounted for; the next turn numbers on from there.
                state.seq_ceiling = stream.seq
                if state.pending_permission is not None and state.pending_permission.turn_id == turn_id:
                    # Its runner died waiting (or could not close it): nobody waits for an answer now,
                    # so a `permission` frame for it is refused instead of acknowledged.
                    state.pending_permission = None
                if requeue is not None and all(q.id != requeue.id for q in state.queue):
                    state.queue.insert(0, requeue)
            return state.subscriber

        subscriber, _ = durably(lambda: self.states.update(session_id, finish), "recording the end of the turn")
        # A resume that raced the end of the turn is ours to serve: it saw the turn running.
        stream.retarget(subscriber)

    def _flush_events(self, session_id: str, turn_id: str, stream: TurnStream) -> None:
        chunk = stream.peek_unflushed()
        if chunk:
            durably(lambda: self.events.append(session_id, turn_id, chunk), "saving the turn's events")
            stream.mark_flushed(len(chunk))

    # -- a dead runner's turn -----------------------------------------------------------------

    def _recover(self, rec: _Recovery, runner_id: str) -> bool:
        """Repair a turn whose runner died: answer its cut-off tool calls, tell the client, and
        run its prompt again if it was never saved. False when storage failed on the way."""
        dead = rec.dead
        log.warning("turn %s of session %s lost its runner (lease ran out at %s); repairing it",
                    dead.turn_id, rec.session_id, dead.lease_until)
        stream = TurnStream(
            self.sender, rec.start_seq, None,
            earlier_events=lambda after: self.events.read(rec.session_id, dead.turn_id, after),
            ceiling=rec.start_seq + SEQ_BLOCK,
        )
        if rec.subscriber is not None:
            self.sender.configure(rec.subscriber.domain_name, rec.subscriber.stage)
            stream.retarget(rec.subscriber)
        requeue: QueuedPrompt | None = None
        try:
            logged = durably(lambda: self.events.read(rec.session_id, dead.turn_id, 0), "reading the turn's events")
            if any(e.get("event") in ("result", "error") for e in logged):
                # The turn had ended (a result, or the error that ended it); only recording that
                # failed (storage was down). Nothing to repair.
                self._finish(rec.session_id, dead.turn_id, runner_id, stream)
                return True
            loaded = durably(lambda: self.conversations.load(rec.user_id, rec.conversation_id), "reading the conversation")
            body: dict[str, Any] = dict(loaded[0]) if loaded else {"conversationId": rec.conversation_id}
            metadata: dict[str, Any] = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
            messages, added = answer_cut_off_calls(list(body.get("messages") or []))
            if added:
                body["messages"] = messages
                durably(lambda: self.conversations.append(rec.user_id, rec.conversation_id, body), "repairing the conversation")
            if rec.pending is not None:
                stream.emit({"event": "permission_resolved", "toolUseId": rec.pending.tool_use_id, "name": rec.pending.name,
                             "decision": "deny", "reason": "turn_cut_off"})
            for block in added:
                stream.emit({"event": "tool_result", "tool_use_id": block["tool_use_id"], "content": block["content"], "is_error": True})
            prompt_saved = metadata.get("lastPromptId") == dead.prompt_id
            if not prompt_saved and dead.prompt is not None:
                requeue = dead.prompt
            stream.emit(error_frame(
                "The server running this turn stopped before it finished (crash, restart or time limit). "
                + ("Your message had not been read yet: it runs again now." if requeue is not None else
                   "What was said is kept" + (" and the unfinished tool call was marked as failed" if added else "")
                   + ": send a message to continue."),
                "turn_cut_off",
            ))
            stream.emit(_cut_short_result(dead.started_at, turns=0))
            self._flush_events(rec.session_id, dead.turn_id, stream)
            self._finish(rec.session_id, dead.turn_id, runner_id, stream, requeue)
            # The dead runner never saved the files its turn made: save them once the queue is empty.
            with self._unsaved_lock:
                self._unsaved[rec.session_id] = rec.user_id
            return True
        except Exception:  # noqa: BLE001 - the lease runs out again and the next runner retries the repair
            log.exception("repairing turn %s of session %s failed", dead.turn_id, rec.session_id)
            return False
        finally:
            stream.close()

    # -- one turn ----------------------------------------------------------------------------

    def _run_one(self, request: TurnRequest, runner_id: str) -> bool:
        """Run one claimed turn; return whether its end was recorded in the session state."""
        stream = TurnStream(
            self.sender,
            request.last_seq,
            None,
            earlier_events=lambda after: self.events.read(request.session_id, request.last_turn_id, after)
            if request.last_turn_id
            else [],
            ceiling=request.seq_ceiling,
        )
        if request.subscriber is not None:
            self.sender.configure(request.subscriber.domain_name, request.subscriber.stage)
            stream.retarget(request.subscriber)
        watcher = _StateWatcher(self, request, runner_id, stream)
        watcher.start()
        progress = _Progress()
        started = utcnow()
        try:
            self._turn(request, stream, watcher, progress)
        except Exception as exc:  # noqa: BLE001 - the turn ends with an error event, the runner lives
            log.exception("turn %s of session %s failed", request.turn_id, request.session_id)
            message = exc.message if isinstance(exc, AppError) else f"The turn failed on the server ({type(exc).__name__})."
            code = exc.code if isinstance(exc, AppError) else "turn_failed"
            try:
                stream.emit(error_frame(message, code))
                self._save_cut_off(progress, stream)
                # Clients wait for `result` to end a turn, as after the agent's own errors.
                stream.emit(_cut_short_result(started, turns=progress.replies()))
            except Exception:  # noqa: BLE001 - the lease runs out and the next runner repairs the turn
                log.exception("saving what turn %s had said failed", request.turn_id)
        finally:
            self._save_workspace(request, stream, watcher)
            watcher.stop()
            recorded = False
            try:
                self._flush_events(request.session_id, request.turn_id, stream)
                self._finish(request.session_id, request.turn_id, runner_id, stream)
                recorded = True
                self.events.prune(request.session_id, {request.turn_id})
            except Exception:  # noqa: BLE001
                log.exception("finishing turn %s of session %s failed", request.turn_id, request.session_id)
            finally:
                stream.close()
        return recorded

    def _save_cut_off(self, progress: _Progress, stream: TurnStream) -> None:
        """After a failure, save the messages the turn had (its last save may have failed),
        with every unanswered tool call answered as cut off, so the next turn can go on."""
        if progress.latest is None or progress.save is None:
            return
        messages, added = answer_cut_off_calls(progress.latest)
        for block in added:
            stream.emit({"event": "tool_result", "tool_use_id": block["tool_use_id"], "content": block["content"], "is_error": True})
        if added or not progress.saved:
            # One attempt: the error is out already, and if storage is still down the lease runs
            # out and the next runner (or the next turn) repairs the stored conversation instead.
            progress.save(messages, retry=False)

    def _turn(self, request: TurnRequest, stream: TurnStream, watcher: _StateWatcher, progress: _Progress) -> None:
        stream.emit({"event": "status", "status": "running", "turnId": request.turn_id, "messageId": request.prompt.id})
        sandbox = RecoveringSandbox(self._sandbox(request, stream), lambda: self._recreate_sandbox(request, stream))
        loaded = durably(lambda: self.conversations.load(request.user_id, request.conversation_id), "reading the conversation")
        body: dict[str, Any] = dict(loaded[0]) if loaded else {}
        body.setdefault("conversationId", request.conversation_id)
        metadata = dict(body.get("metadata") or {})
        metadata.setdefault("startedAt", utcnow().isoformat())
        metadata.update({"sessionId": request.session_id, "userId": request.user_id})
        # A turn cut off earlier (storage lost for good, a runner killed before its repair ran)
        # may have left a call unanswered, which the API would refuse on every later turn.
        history, _ = answer_cut_off_calls(list(body.get("messages") or []))
        progress.history_length = len(history)

        def save(messages: list[dict[str, Any]], retry: bool = True) -> None:
            progress.latest, progress.saved = list(messages), False
            body["messages"] = messages
            metadata["updatedAt"] = utcnow().isoformat()
            # Recovery after a crash runs the prompt again only if it was never saved.
            metadata["lastPromptId"] = request.prompt.id
            body["metadata"] = metadata
            write = lambda: self.conversations.append(request.user_id, request.conversation_id, body)  # noqa: E731
            durably(write, "saving the conversation") if retry else write()
            progress.saved = True
            self._flush_events(request.session_id, request.turn_id, stream)

        progress.save = save
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
            save_memory=lambda memory: self._save_memory(request, watcher.runner_id, memory),
            ask_permission=PermissionDesk(
                self.states, request.session_id, request.turn_id, stream.emit, watcher.interrupted.is_set,
                timeout_seconds=self.settings.agent.permission_timeout_seconds, poll_seconds=self.poll_interval,
            ).ask,
            durable=durably,
        )

    def _save_workspace(self, request: TurnRequest, stream: TurnStream, watcher: _StateWatcher) -> None:
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
        except AppError as exc:
            stream.emit(error_frame(exc.message, exc.code))
        except SandboxError as exc:
            stream.emit(error_frame(f"The workspace could not be saved: {exc}. It is saved again after the next turn.",
                                    "workspace_snapshot_failed"))
        except Exception:  # noqa: BLE001 - the turn is over; its result stands
            log.exception("saving the workspace of session %s failed", request.session_id)

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

    def _save_memory(self, request: TurnRequest, runner_id: str, memory: AgentMemory) -> None:
        """Keep the agent's skill index and working context for the session's next message."""

        def keep(state: SessionState) -> None:
            turn = state.turn
            # A runner whose turn was taken over (it stalled past its lease) must not put back
            # a working context that describes the conversation as it left it.
            if turn is not None and turn.runner_id == runner_id and turn.turn_id == request.turn_id:
                state.agent_memory = memory.model_copy(deep=True)

        durably(lambda: self.states.update(request.session_id, keep), "saving the agent's working context")

    def _sandbox(self, request: TurnRequest, stream: TurnStream) -> Sandbox:
        """The session's sandbox; if it went away, a fresh one with the skills loaded again."""
        try:
            return self.sessions.sandbox_for(request.session_id)
        except SandboxGone:
            return self._recreate_sandbox(request, stream)
        except SandboxError as exc:
            raise AppError(f"The sandbox is unavailable: {exc}. Retry shortly.", code="sandbox_unavailable") from exc

    def _recreate_sandbox(self, request: TurnRequest, stream: TurnStream) -> Sandbox:
        loaded = self.sessions.reload_skills(request.session_id, request.user_id)
        stream.emit(
            {
                "event": "status",
                "status": "sandbox_recreated",
                "message": "The sandbox had gone away (idle timeout, host restart, its folder deleted or a move to "
                "another host); a new one was prepared, its files were restored from the last snapshot and the "
                "skills were loaded again.",
                "skillsLoaded": loaded,
            }
        )
        return self.sessions.sandbox_for(request.session_id)


@dataclass
class _Progress:
    """What a turn has said so far, for saving it after a failure."""

    latest: list[dict[str, Any]] | None = None
    saved: bool = True
    save: Callable[..., None] | None = None
    history_length: int = 0

    def replies(self) -> int:
        """Model replies made in this turn so far."""
        return sum(1 for m in (self.latest or [])[self.history_length:] if m.get("role") == "assistant")


def _pending_of(state: SessionState, turn_id: str) -> PendingPermission | None:
    pending = state.pending_permission
    return pending if pending is not None and pending.turn_id == turn_id else None


def _cut_short_result(started: datetime, *, turns: int) -> dict[str, Any]:
    """The `result` of a turn that ended on an error outside the agent loop (or was cut off):
    usage and cost are not known there."""
    return {
        "event": "result", "turns": turns, "durationMs": int((utcnow() - started).total_seconds() * 1000),
        "usage": {"inputTokens": 0, "outputTokens": 0, "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0},
        "costUsd": None, "model": None, "stopReason": "error", "interrupted": False,
    }


class _StateWatcher:
    """Polls the session state during a turn (interrupts, reconnects) and renews the lease."""

    def __init__(self, runner: TurnRunner, request: TurnRequest, runner_id: str, stream: TurnStream) -> None:
        self.runner = runner
        self.request = request
        self.runner_id = runner_id
        self.stream = stream
        self.interrupted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{request.session_id}", daemon=True)
        self._last_renewal = time.monotonic()
        # Messages queued behind this turn, as of the last poll (so its workspace save can wait).
        self.queued_behind = 0
        # Set when another runner took the turn over (this one stalled past its lease).
        self.lost = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        interval = min(self.runner.poll_interval, self.runner.renew_every)
        while not self._stop.wait(interval):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a failed poll is retried at the next tick
                log.exception("polling state of session %s failed", self.request.session_id)

    def _poll(self) -> None:
        if time.monotonic() - self._last_renewal >= self.runner.renew_every:
            state: SessionState | None = self._renew()
        else:
            state = self.runner.states.read(self.request.session_id)
        if state is None:
            # The state went away under a running turn: DELETE /sandbox destroyed the session.
            # Stop at the next step, and leave the workspace alone (as after a takeover).
            self.lost.set()
            self.interrupted.set()
            return
        self.queued_behind = len(state.queue)
        turn = state.turn
        if turn is None or turn.turn_id != self.request.turn_id or turn.runner_id != self.runner_id:
            self.lost.set()
        if self.lost.is_set() or turn is None or turn.interrupt:
            # Interrupted, or the turn was taken over: stop as soon as the loop can.
            self.interrupted.set()
        if state.subscriber is not None and state.subscriber.nonce != self.stream.served_nonce:
            self.runner.sender.configure(state.subscriber.domain_name, state.subscriber.stage)
            self.stream.retarget(state.subscriber)

    def _renew(self) -> SessionState:
        """Extend the lease and the seq high-water mark in one conditional write."""
        mark = self.stream.seq + SEQ_BLOCK

        def renew(s: SessionState) -> bool:
            if s.turn is None or s.turn.runner_id != self.runner_id or s.turn.turn_id != self.request.turn_id:
                return False
            now = utcnow()
            s.turn.heartbeat_at = now
            s.turn.lease_until = now + self.runner.lease
            s.seq_ceiling = max(s.seq_ceiling, mark)
            return True

        ours, state = self.runner.states.update(self.request.session_id, renew)
        if ours:
            self._last_renewal = time.monotonic()
            self.stream.raise_ceiling(mark)
        return state
