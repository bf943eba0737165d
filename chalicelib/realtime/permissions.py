"""Permission prompts over the websocket, through the session state.

The turn runner and the websocket handlers run in different Lambdas, so neither waits on a
socket: the runner records the pending request in the session state, emits a
`permission_request` event (a numbered turn event, so `resume` replays it), and polls the
state like it polls for interrupts; the `permission` frame's handler writes the decision
into the state. An interrupt, or no answer within PERMISSION_TIMEOUT_SECONDS, ends the wait
with a denial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from chalicelib.agent.permissions import Decision, PendingPermission, PermissionAnswer
from chalicelib.errors import AppError, Conflict
from chalicelib.realtime.durable import durably
from chalicelib.realtime.lease import Lease
from chalicelib.realtime.protocol import PermissionFrame
from chalicelib.realtime.state import SessionState, StateCursor, StateStore, utcnow

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], dict[str, Any]]
T = TypeVar("T")


class PermissionDesk:
    """The runner's side: asks the client, waits on the session state for the answer."""

    def __init__(self, states: StateStore, session_id: str, turn_id: str, emit: Emit, should_stop: Callable[[], bool], *,
                 timeout_seconds: float, poll_seconds: float, lease: Lease | None = None,
                 cursor: StateCursor | None = None) -> None:
        self.states = states
        # The turn's view of the state (see StateCursor): writes start from it, and a poll is a
        # HeadObject that reads the body only once the state changed (the answer came).
        self.cursor = cursor
        # Its writes are fenced by the turn's lease like the runner's own (see lease.py).
        self.lease = lease
        self.session_id = session_id
        self.turn_id = turn_id
        self.emit = emit
        self.should_stop = should_stop
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds

    def ask(self, tool_use_id: str, name: str, tool_input: dict[str, Any]) -> PermissionAnswer:
        """The user's answer for one tool call (or a remembered one, a timeout, an interrupt)."""
        pending = PendingPermission(tool_use_id=tool_use_id, name=name, input=tool_input, turn_id=self.turn_id,
                                    asked_at=utcnow())

        def open_request(state: SessionState) -> Decision | None:
            if self.lease is not None:
                self.lease.require(state, "opening a permission request")
            remembered = state.remembered_permissions.get(name)
            if remembered is None:
                state.pending_permission = pending
            return remembered

        # Retried through a storage blip like the turn's other writes: failing here ends the turn.
        remembered, _ = durably(lambda: self._update(open_request), "opening a permission request")
        if remembered is not None:
            return PermissionAnswer(decision=remembered, reason="remembered")
        self.emit({"event": "permission_request", "toolUseId": tool_use_id, "name": name, "input": tool_input,
                   "timeoutSeconds": self.timeout_seconds})
        answer = self._wait(tool_use_id)
        self._close(tool_use_id)
        self.emit({"event": "permission_resolved", "toolUseId": tool_use_id, "name": name, "decision": answer.decision,
                   "reason": answer.reason})
        return answer

    def _wait(self, tool_use_id: str) -> PermissionAnswer:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            if self.should_stop():
                return PermissionAnswer(decision="deny", reason="interrupted")
            try:
                state = self.cursor.refresh() if self.cursor is not None else self.states.read(self.session_id)
            except AppError as exc:  # a storage hiccup: ask again at the next tick
                log.warning("reading the permission answer for session %s failed: %s", self.session_id, exc.message)
                state = None
            pending = state.pending_permission if state is not None else None
            if pending is not None and pending.tool_use_id == tool_use_id and pending.decision is not None:
                return PermissionAnswer(decision=pending.decision, reason="user")
            if state is not None and (state.turn is None or state.turn.turn_id != self.turn_id or state.turn.interrupt):
                return PermissionAnswer(decision="deny", reason="interrupted")
            left = deadline - time.monotonic()
            if left <= 0:
                return PermissionAnswer(decision="deny", reason="timeout")
            time.sleep(min(self.poll_seconds, left))

    def _close(self, tool_use_id: str) -> None:
        def close(state: SessionState) -> None:
            if self.lease is not None:
                self.lease.require(state, "closing a permission request")
            if state.pending_permission is not None and state.pending_permission.tool_use_id == tool_use_id:
                state.pending_permission = None

        durably(lambda: self._update(close), "closing a permission request")

    def _update(self, mutate: Callable[[SessionState], T]) -> tuple[T, SessionState]:
        if self.cursor is not None:
            return self.cursor.update(mutate)
        return self.states.update(self.session_id, mutate)


def record_decision(states: StateStore, session_id: str, answer: PermissionFrame) -> dict[str, Any]:
    """The handler's side of a `permission` frame: write the decision for the waiting runner.

    Raises Conflict when no request with that toolUseId is waiting (answered, timed out, or
    never asked)."""

    def decide(state: SessionState) -> PendingPermission:
        pending = state.pending_permission
        if pending is None or pending.tool_use_id != answer.tool_use_id:
            waiting = f" (the waiting one is {pending.tool_use_id!r})" if pending is not None else ""
            raise Conflict(
                f"No permission request {answer.tool_use_id!r} is waiting{waiting}: it was answered, timed out, or "
                "its turn ended. Answer the latest permission_request.", code="no_pending_permission",
            )
        if pending.decision is None:
            pending.decision = answer.decision
            pending.remember = answer.remember
            if answer.remember:
                state.remembered_permissions[pending.name] = answer.decision
        return pending

    pending, _ = states.update(session_id, decide)
    return {"event": "status", "seq": 0, "status": "permission_received", "toolUseId": pending.tool_use_id,
            "decision": pending.decision, "remember": pending.remember}
