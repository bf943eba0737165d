"""A turn runner invocation that failed for good: Lambda's on-failure destination (an SQS queue)
hands its record to `turn_failures`, which repairs the turn the dead runner left, does not run
its prompt again, tells the client (`error` code `turn_failed`) and moves the queue on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from chalicelib.realtime.state import QueuedPrompt, SessionState, Subscriber
from chalicelib.storage.local import LocalDirectoryStore
from tests.fakes.fake_anthropic import Reply, Text
from tests.integration.test_turn_takeover import frames_of, stage_dead_runner, text_of
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def destination_record(session: str, **overrides: Any) -> str:
    """What Lambda sends to an on-failure destination after the last retry (AWS's documented shape)."""
    record = {
        "version": "1.0", "timestamp": "2026-12-07T02:10:05.568Z",
        "requestContext": {"requestId": "e4b46cbf-b738-4b3a-8880-a18cdf61200e", "condition": "RetriesExhausted",
                           "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:claude-agent-TurnRunner-1:$LATEST",
                           "approximateInvokeCount": 3},
        "requestPayload": {"sessionId": session},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "Process exited before completing request", "errorType": "Runtime.ExitError"},
    }
    record.update(overrides)
    return json.dumps(record)


def subscribe(data: Path, session: str, connection: str, queue: list[QueuedPrompt] | None = None) -> None:
    """The client that was watching the turn when its runner died (and what it queued behind it)."""
    store = LocalDirectoryStore(data)
    key = f"sessions/{session}/state.json"
    state = SessionState.model_validate_json(store.get(key).body)
    state.subscribers = [Subscriber(connection_id=connection, domain_name="abc.execute-api.us-east-1.amazonaws.com", stage="api")]
    state.queue = queue or []
    store.put(key, state.model_dump_json(by_alias=True).encode())


def deliver(client: Any, *bodies: str) -> Any:
    event = client.events.generate_sqs_event(message_bodies=list(bodies), queue_name="claude-agent-turn-failures")
    return client.lambda_.invoke("turn_failures", event).payload


def test_a_failed_turn_is_repaired_the_client_told_and_the_queue_moves_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "fail1")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "fail1", "token": token}))
        stage_dead_runner(tmp_path / "data", "fail1", lease_left=-1, prompt_saved=False)
        subscribe(tmp_path / "data", "fail1", "c1", queue=[QueuedPrompt(id="p-next", prompt="next one")])
        fake.script(Reply([Text("Did the next one.")]))

        assert deliver(client, destination_record("fail1")) == {"fail1": "repaired"}
        frames = frames_of(management, "c1", lambda fs: sum(f["event"] == "result" for f in fs) == 2)
        dispatcher.join(30)
    errors = [f for f in frames if f["event"] == "error"]
    assert [e["code"] for e in errors] == ["turn_failed"]
    assert "3 attempts, Unhandled: Runtime.ExitError" in errors[0]["message"] and "was not run" in errors[0]["message"]
    # The failing prompt is not run again (it may be what kills the runner); the one behind it is.
    assert [text_of(r["messages"][-1]["content"]) for r in fake.requests] == ["next one"]
    state = json.loads((tmp_path / "data/sessions/fail1/state.json").read_text())
    assert state["turn"] is None and state["queue"] == [] and state["lastTurnId"] != "t-dead"


def test_a_saved_turn_gets_its_cut_off_call_answered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        setup_session(client, "fail2")
        stage_dead_runner(tmp_path / "data", "fail2", lease_left=-1, prompt_saved=True)
        subscribe(tmp_path / "data", "fail2", "c2")
        assert deliver(client, destination_record("fail2")) == {"fail2": "repaired"}
        frames = frames_of(management, "c2", lambda fs: any(f["event"] == "result" for f in fs))
        dispatcher.join(30)
    assert [f["event"] for f in frames if f["event"] != "status"] == ["tool_result", "error", "result"]
    assert frames[-2]["code"] == "turn_failed" and "send a message to continue" in frames[-2]["message"]
    saved = json.loads((tmp_path / "data/users/alice/conversations/fail2.json").read_text())["messages"]
    assert saved[-1]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_dead", "is_error": True,
                                       "content": saved[-1]["content"][0]["content"]}
    assert fake.requests == []


def test_a_live_turn_and_a_bad_record_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        setup_session(client, "fail3")
        stage_dead_runner(tmp_path / "data", "fail3", lease_left=60)  # a later invocation holds it, alive
        before = (tmp_path / "data/sessions/fail3/state.json").read_bytes()
        assert deliver(client, destination_record("fail3"), "not json",
                       destination_record("../x"), destination_record("fail3", requestPayload={})) == {"fail3": "running"}
        assert deliver(client, destination_record("nosuch")) == {"nosuch": "idle"}
        dispatcher.join(30)
    assert (tmp_path / "data/sessions/fail3/state.json").read_bytes() == before
    assert management.sent == {} and fake.requests == []
