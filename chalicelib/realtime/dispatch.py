"""Starting the turn runner without making the websocket handler wait for the turn.

In AWS the runner is its own Lambda, invoked asynchronously (InvocationType=Event), so a turn
can run for up to 15 minutes while API Gateway's 29-second integration limit only applies to
the handler that queued it. The local gateway implements the same Invoke API, so the same code
runs there; tests can run the runner on a thread instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.errors import ServiceUnavailable
from chalicelib.telemetry import tracing

if TYPE_CHECKING:
    from chalicelib.realtime.handoff import Handoff

log = logging.getLogger(__name__)


class TurnDispatcher(Protocol):
    """Starts a turn runner for a session, in the background."""

    def dispatch(self, session_id: str, handoff: Handoff | None = None) -> None:
        """Start a runner; `handoff`: the turn the edge claimed for it (see handoff.py)."""
        ...


class LambdaDispatcher:
    """Invoke the turn runner Lambda asynchronously."""

    def __init__(self, lambda_client: Any, function_name: str) -> None:
        self.client = lambda_client
        self.function_name = function_name

    def dispatch(self, session_id: str, handoff: Handoff | None = None) -> None:
        # The handler's trace context (W3C traceparent; none when tracing is off): the runner continues it.
        payload: dict[str, Any] = {"sessionId": session_id, **tracing.headers()}
        if handoff is not None:
            payload["handoff"] = handoff.payload()
        try:
            self.client.invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=json.dumps(payload).encode(),
            )
        except (ClientError, BotoCoreError) as exc:
            raise ServiceUnavailable(
                f"Could not start the turn runner ({self.function_name}): {exc}. Your message is "
                "queued and will run when you send the next one.",
                code="turn_runner_unavailable",
            ) from exc


class ThreadDispatcher:
    """Run the turn runner on a daemon thread of this process."""

    def __init__(self, run: Callable[[str, Handoff | None], Any]) -> None:
        self.run = run
        self.threads: list[threading.Thread] = []

    def dispatch(self, session_id: str, handoff: Handoff | None = None) -> None:
        carrier = tracing.headers()  # a new thread starts with no trace context: hand this one over

        def target() -> None:
            try:
                with tracing.continued(carrier), tracing.span("turn runner", {"session.id": session_id}, kind="consumer"):
                    self.run(session_id, handoff)
            except Exception:  # noqa: BLE001 - a background thread has nobody else to tell
                log.exception("turn runner for session %s failed", session_id)

        thread = threading.Thread(target=target, name=f"turn-{session_id}", daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for every runner started so far (tests use this to wait for a turn)."""
        for thread in list(self.threads):
            thread.join(timeout)


class BackgroundInvoker(Protocol):
    """Runs the turn runner Lambda's other work (Engine.IO's open packet) in the background."""

    def invoke(self, payload: dict[str, Any]) -> None:
        ...


class LambdaInvoker:
    """Invoke the turn runner Lambda asynchronously with any payload."""

    def __init__(self, lambda_client: Any, function_name: str) -> None:
        self.client = lambda_client
        self.function_name = function_name

    def invoke(self, payload: dict[str, Any]) -> None:
        try:
            self.client.invoke(FunctionName=self.function_name, InvocationType="Event", Payload=json.dumps(payload).encode())
        except (ClientError, BotoCoreError) as exc:
            raise ServiceUnavailable(f"Could not invoke {self.function_name}: {exc}. Connect again.",
                                     code="turn_runner_unavailable") from exc
