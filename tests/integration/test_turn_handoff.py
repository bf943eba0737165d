"""The edge claims an idle session's turn in its enqueue write and hands it to the runner.

What must hold (issue 22, keeping issue 21's guarantees): the handed turn runs once with no
state read or write to start; a retried invocation carrying the same handoff runs nothing again;
a stale handoff is not trusted (the runner claims from the stored state, and the message still
runs once); a runner that cannot be started puts the message back in the queue; a frame naming
another session than its connection's is answered for the connection's session.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib.errors import ServiceUnavailable
from chalicelib.realtime.handoff import Handoff
from chalicelib.realtime.state import utcnow
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ...]]:
    monkeypatch.setenv("TURN_LEASE_SECONDS", "2")
    with lambda_harness(tmp_path, monkeypatch) as parts:
        yield (*parts, tmp_path / "data")


def send(client: Any, connection: str, frame: dict[str, Any]) -> None:
    client.lambda_.invoke("ws_message", ws_event("$default", connection, json.dumps(frame)))


def user_prompts(data: Path, session: str) -> list[str]:
    messages = json.loads((data / f"users/alice/conversations/{session}.json").read_text())["messages"]
    return [m["content"] for m in messages if m["role"] == "user" and isinstance(m["content"], str)]


def state(data: Path, session: str) -> dict[str, Any]:
    return json.loads((data / f"sessions/{session}/state.json").read_text())  # type: ignore[no-any-return]


def capture(dispatcher: Any, *, run: bool = True) -> tuple[list[Handoff | None], Callable[[str, Handoff | None], int]]:
    """Record the handoffs the edge dispatches (and run them, unless `run` is false); returns
    them and the runner itself (what a delivered invocation runs)."""
    seen: list[Handoff | None] = []
    original = dispatcher.run

    def recording(session_id: str, handoff: Handoff | None) -> Any:
        seen.append(handoff)
        return original(session_id, handoff) if run else 0

    dispatcher.run = recording
    return seen, original


def wait_for_results(management: Any, connection: str, count: int) -> list[dict[str, Any]]:
    for _ in range(300):  # bounded: 30 s
        if sum(1 for f in management.sent.get(connection, []) if f["event"] == "result") >= count:
            break
        time.sleep(0.1)
    return list(management.sent.get(connection, []))


def test_a_handed_turn_runs_once_and_a_retried_invocation_runs_nothing(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, data = harness
    token = setup_session(client, "ho1")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "ho1", "token": token}))
    handed, runner = capture(dispatcher)
    fake.script(Reply([Text("Once.")]))
    send(client, "c1", {"action": "message", "prompt": "hello", "sessionId": "ho1"})
    management.wait_for("c1", "result")
    dispatcher.join(30)
    assert len(handed) == 1 and handed[0] is not None and handed[0].state.turn is not None
    # Lambda delivers the same invocation again (at-least-once), its handoff still fresh: the
    # conversation shows its prompt saved, so nothing runs twice and the state is left alone.
    again = handed[0].model_copy(update={"claimed_at": utcnow()})
    before = state(data, "ho1")
    assert runner("ho1", again) == 0 and len(fake.requests) == 1
    assert user_prompts(data, "ho1") == ["hello"]
    after = state(data, "ho1")
    assert after["turn"] is None and after["lastSeq"] == before["lastSeq"]


def test_a_stale_handoff_is_not_trusted_and_the_message_still_runs_once(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, data = harness
    token = setup_session(client, "ho2")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "ho2", "token": token}))
    handed, runner = capture(dispatcher, run=False)  # the invocation is late (a cold start, a busy pool)
    send(client, "c1", {"action": "message", "prompt": "late", "sessionId": "ho2"})
    assert len(handed) == 1 and handed[0] is not None
    stale = handed[0].model_copy(update={"claimed_at": utcnow() - timedelta(seconds=5)})
    fake.script(Reply([Text("Ran late, once.")]))
    # Not trusted: the runner waits the claim's lease out, takes the never-started turn over and
    # runs its message (the client is told the first start was lost).
    assert runner("ho2", stale) == 1
    frames = wait_for_results(management, "c1", 2)
    assert frames[-1]["event"] == "result" and frames[-1]["stopReason"] == "end_turn"
    assert user_prompts(data, "ho2") == ["late"] and len(fake.requests) == 1
    assert state(data, "ho2")["turn"] is None


def test_a_runner_that_cannot_be_started_puts_the_message_back(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, data = harness
    token = setup_session(client, "ho3")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "ho3", "token": token}))
    def failing_dispatch(session_id: str, handoff: Handoff | None = None) -> None:
        raise ServiceUnavailable("Could not start the turn runner.", code="turn_runner_unavailable")

    dispatcher.dispatch, saved = failing_dispatch, dispatcher.dispatch
    send(client, "c1", {"action": "message", "prompt": "first", "messageId": "m-first"})
    refused = management.wait_for("c1", "error")
    assert any(f["event"] == "error" and f["code"] == "turn_runner_unavailable" for f in refused)
    stored = state(data, "ho3")
    assert stored["turn"] is None and [q["id"] for q in stored["queue"]] == ["m-first"]  # released, not stranded
    dispatcher.dispatch = saved
    fake.script(Reply([Text("First.")]), Reply([Text("Second.")]))
    send(client, "c1", {"action": "message", "prompt": "second", "messageId": "m-second"})
    wait_for_results(management, "c1", 2)
    dispatcher.join(30)
    assert user_prompts(data, "ho3") == ["first", "second"]


def test_a_frame_naming_another_session_is_answered_for_its_connections(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, data = harness
    mine, other = setup_session(client, "ho4"), setup_session(client, "ho5")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "ho4", "token": mine}))
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c2", query={"sessionId": "ho5", "token": other}))
    untouched = state(data, "ho5")
    fake.script(Reply([Text("For ho4.")]))
    send(client, "c1", {"action": "message", "prompt": "mine", "sessionId": "ho5"})
    management.wait_for("c1", "result")
    dispatcher.join(30)
    assert user_prompts(data, "ho4") == ["mine"]
    assert state(data, "ho5") == untouched and "c2" not in management.sent
