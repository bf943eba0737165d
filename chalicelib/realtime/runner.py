"""The turn runner: takes queued messages of a session one at a time and runs the agent.

It runs outside the websocket handlers (its own Lambda in AWS, a worker locally), so a turn
may last far longer than API Gateway's 29-second limit. One runner owns a session's turn at a
time (claimed in the session state with If-Match); a second runner finds the turn taken and
leaves. While it runs, a poller watches the state for interrupts and reconnects and writes a
heartbeat, so a runner that dies is noticed and replaced by the next message.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chalicelib.agent.memory import AgentMemory
from chalicelib.config import Settings
from chalicelib.errors import AppError
from chalicelib.realtime.event_log import EventLog
from chalicelib.realtime.protocol import error_frame
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import QueuedPrompt, RunningTurn, SessionState, StateStore, Subscriber, utcnow
from chalicelib.realtime.stream import TurnStream
from chalicelib.sandbox.base import Sandbox, SandboxError, SandboxGone
from chalicelib.services.conversations import ConversationsService
from chalicelib.services.sessions import SessionsService
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots

log = logging.getLogger(__name__)

MAX_TURNS_PER_INVOCATION = 50
HEARTBEAT_EVERY = timedelta(seconds=15)


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
    agent_memory: AgentMemory | None = None


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
        self.snapshots = snapshots
        # Sessions whose workspace save was put off because another message was queued behind.
        self._unsaved: dict[str, str] = {}
        self._unsaved_lock = threading.Lock()

    def run(self, session_id: str, time_left: Callable[[], float] | None = None, reinvoke: Callable[[], None] | None = None) -> int:
        """Run queued turns; return how many ran. Hands over to a fresh invocation (`reinvoke`)
        when less than five minutes remain, so a queue never outlives a Lambda."""
        runner_id = uuid.uuid4().hex[:12]
        ran = 0
        for _ in range(MAX_TURNS_PER_INVOCATION):
            if ran and time_left is not None and time_left() < 300:
                if reinvoke is not None:
                    reinvoke()
                return ran
            request = self._claim(session_id, runner_id)
            if request is None:
                self._save_put_off(session_id)
                return ran
            self._run_one(request, runner_id)
            ran += 1
        if reinvoke is not None:
            reinvoke()
        return ran

    # -- claiming and finishing -------------------------------------------------------------

    def _claim(self, session_id: str, runner_id: str) -> TurnRequest | None:
        def claim(state: SessionState) -> TurnRequest | None:
            if state.turn is not None and not state.turn.is_stale() and state.turn.runner_id != runner_id:
                return None  # another runner is on it
            if not state.queue:
                state.turn = None
                return None
            prompt = state.queue.pop(0)
            now = utcnow()
            turn_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            state.turn = RunningTurn(
                turn_id=turn_id, runner_id=runner_id, prompt_id=prompt.id, started_at=now, heartbeat_at=now
            )
            return TurnRequest(
                session_id=session_id,
                user_id=state.user_id,
                conversation_id=state.conversation_id,
                turn_id=turn_id,
                prompt=prompt,
                model=state.model,
                max_turns=state.max_turns,
                subscriber=state.subscriber,
                last_seq=state.last_seq,
                last_turn_id=state.last_turn_id,
                agent_memory=state.agent_memory.model_copy(deep=True),
            )

        try:
            request, _ = self.states.update(session_id, claim)
        except AppError as exc:
            log.error("cannot claim a turn for session %s: %s", session_id, exc.message)
            return None
        return request

    def _finish(self, request: TurnRequest, runner_id: str, stream: TurnStream) -> None:
        def finish(state: SessionState) -> Subscriber | None:
            if state.turn is not None and state.turn.runner_id == runner_id:
                state.turn = None
            state.last_seq = max(state.last_seq, stream.seq)
            state.last_turn_id = request.turn_id
            return state.subscriber

        subscriber, _ = self.states.update(request.session_id, finish)
        # A resume that raced the end of the turn is ours to serve: it saw the turn running.
        stream.retarget(subscriber)

    # -- one turn ----------------------------------------------------------------------------

    def _run_one(self, request: TurnRequest, runner_id: str) -> None:
        stream = TurnStream(
            self.sender,
            request.last_seq,
            None,
            earlier_events=lambda after: self.events.read(request.session_id, request.last_turn_id, after)
            if request.last_turn_id
            else [],
        )
        if request.subscriber is not None:
            self.sender.configure(request.subscriber.domain_name, request.subscriber.stage)
            stream.retarget(request.subscriber)
        watcher = _StateWatcher(self, request, runner_id, stream)
        watcher.start()
        try:
            self._turn(request, stream, watcher)
        except Exception as exc:  # noqa: BLE001 - the turn ends with an error event, the runner lives
            log.exception("turn %s of session %s failed", request.turn_id, request.session_id)
            message = exc.message if isinstance(exc, AppError) else f"The turn failed on the server ({type(exc).__name__})."
            code = exc.code if isinstance(exc, AppError) else "turn_failed"
            stream.emit(error_frame(message, code))
        finally:
            self._save_workspace(request, stream, watcher)
            watcher.stop()
            try:
                self.events.append(request.session_id, request.turn_id, stream.take_unflushed())
                self._finish(request, runner_id, stream)
                keep = {request.turn_id}
                self.events.prune(request.session_id, keep)
            except Exception:  # noqa: BLE001
                log.exception("finishing turn %s of session %s failed", request.turn_id, request.session_id)
            finally:
                stream.close()

    def _turn(self, request: TurnRequest, stream: TurnStream, watcher: _StateWatcher) -> None:
        stream.emit({"event": "status", "status": "running", "turnId": request.turn_id, "messageId": request.prompt.id})
        sandbox = self._sandbox(request, stream)
        loaded = self.conversations.load(request.user_id, request.conversation_id)
        body: dict[str, Any] = dict(loaded[0]) if loaded else {}
        body.setdefault("conversationId", request.conversation_id)
        metadata = dict(body.get("metadata") or {})
        metadata.setdefault("startedAt", utcnow().isoformat())
        metadata.update({"sessionId": request.session_id, "userId": request.user_id})
        history = list(body.get("messages") or [])

        def save(messages: list[dict[str, Any]]) -> None:
            body["messages"] = messages
            metadata["updatedAt"] = utcnow().isoformat()
            body["metadata"] = metadata
            self.conversations.save(request.user_id, request.conversation_id, body)
            self.events.append(request.session_id, request.turn_id, stream.take_unflushed())

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
            save_memory=lambda memory: self._save_memory(request.session_id, memory),
        )

    def _save_workspace(self, request: TurnRequest, stream: TurnStream, watcher: _StateWatcher) -> None:
        """Snapshot the workspace after the turn, unless another message waits (a burst saves once, at its end)."""
        if self.snapshots is None:
            return
        if watcher.queued_behind > 0:
            with self._unsaved_lock:
                self._unsaved[request.session_id] = request.user_id
            return
        with self._unsaved_lock:
            self._unsaved.pop(request.session_id, None)
        try:
            self.snapshots.save(request.session_id, request.user_id, self.sessions.sandbox_for(request.session_id))
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
        """The queue emptied without the last turn saving (its followers were interrupted): save now."""
        with self._unsaved_lock:
            user_id = self._unsaved.pop(session_id, None)
        if user_id is None or self.snapshots is None:
            return
        try:
            self.snapshots.save(session_id, user_id, self.sessions.sandbox_for(session_id))
        except Exception:  # noqa: BLE001 - the next turn saves again
            log.exception("saving the workspace of session %s failed", session_id)

    def _save_memory(self, session_id: str, memory: AgentMemory) -> None:
        """Keep the agent's skill index and working context for the session's next message."""

        def keep(state: SessionState) -> None:
            state.agent_memory = memory.model_copy(deep=True)

        self.states.update(session_id, keep)

    def _sandbox(self, request: TurnRequest, stream: TurnStream) -> Sandbox:
        """The session's sandbox; if it went away, a fresh one with the skills loaded again."""
        try:
            return self.sessions.sandbox_for(request.session_id)
        except SandboxGone:
            loaded = self.sessions.reload_skills(request.session_id, request.user_id)
            stream.emit(
                {
                    "event": "status",
                    "status": "sandbox_recreated",
                    "message": "The sandbox had gone away (idle timeout, host restart or a move to another host); "
                    "a new one was prepared, its files were restored from the last snapshot and the skills were loaded again.",
                    "skillsLoaded": loaded,
                }
            )
            return self.sessions.sandbox_for(request.session_id)
        except SandboxError as exc:
            raise AppError(f"The sandbox is unavailable: {exc}. Retry shortly.", code="sandbox_unavailable") from exc


class _StateWatcher:
    """Polls the session state during a turn: interrupts, reconnects, heartbeat."""

    def __init__(self, runner: TurnRunner, request: TurnRequest, runner_id: str, stream: TurnStream) -> None:
        self.runner = runner
        self.request = request
        self.runner_id = runner_id
        self.stream = stream
        self.interrupted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{request.session_id}", daemon=True)
        self._last_beat = time.monotonic()
        # Messages queued behind this turn, as of the last poll (so its workspace save can wait).
        self.queued_behind = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.runner.poll_interval):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a failed poll is retried at the next tick
                log.exception("polling state of session %s failed", self.request.session_id)

    def _poll(self) -> None:
        state = self.runner.states.read(self.request.session_id)
        if state is None:
            return
        self.queued_behind = len(state.queue)
        turn = state.turn
        if turn is None or turn.turn_id != self.request.turn_id or turn.interrupt:
            # Interrupted, or the turn was taken over: stop as soon as the loop can.
            self.interrupted.set()
        if state.subscriber is not None and state.subscriber.nonce != self.stream.served_nonce:
            self.runner.sender.configure(state.subscriber.domain_name, state.subscriber.stage)
            self.stream.retarget(state.subscriber)
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY.total_seconds():
            self._last_beat = time.monotonic()

            def beat(s: SessionState) -> None:
                if s.turn is not None and s.turn.runner_id == self.runner_id:
                    s.turn.heartbeat_at = utcnow()

            self.runner.states.update(self.request.session_id, beat)
