"""Issue 21, row 4: corrupt objects are repaired or reported, never a loop.

The websocket handlers as Lambda invocations over the embedded store. A `state.json` or
`session.json` that does not parse is set aside under `corrupt/` (the bytes kept) and rebuilt;
the client hears `session_repaired` and the session works again. A conversation object that
does not parse is never overwritten: the turn refuses with `conversation_unreadable`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ...]]:
    with lambda_harness(tmp_path, monkeypatch) as parts:
        yield (*parts, tmp_path / "data")


def connect(client: Any, connection: str, session: str, token: str) -> int:
    answer = client.lambda_.invoke("ws_connect", ws_event("$connect", connection, query={"sessionId": session, "token": token}))
    return int(answer.payload["statusCode"])


def message(client: Any, connection: str, prompt: str) -> None:
    client.lambda_.invoke("ws_message", ws_event("$default", connection, json.dumps({"action": "message", "prompt": prompt})))


def first_turn(client: Any, management: Any, fake: Any, session: str) -> str:
    token = setup_session(client, session)
    assert connect(client, "c1", session, token) == 200
    fake.script(Reply([Text("First answer.")]))
    message(client, "c1", "first")
    management.wait_for("c1", "result")
    return token


def set_aside(data: Path, key: str) -> list[Path]:
    return sorted((data / "corrupt").glob(f"{key}.*"))


def test_an_unreadable_state_is_set_aside_rebuilt_and_the_client_told(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, data = harness
    first_turn(client, management, fake, "cs1")
    dispatcher.join(30)
    state_file = data / "sessions/cs1/state.json"
    garbled = state_file.read_bytes()[:57]  # truncated mid-write
    state_file.write_bytes(garbled)
    fake.script(Reply([Text("Second answer.")]))
    management.sent.clear()
    message(client, "c1", "second")
    frames = management.wait_for("c1", "result", timeout=30)
    dispatcher.join(30)
    assert frames[0]["event"] == "status" and frames[0]["status"] == "session_repaired", frames
    assert "rebuilt" in frames[0]["message"]
    assert frames[1]["status"] == "queued" and frames[-1]["stopReason"] == "end_turn"
    [aside] = set_aside(data, "sessions/cs1/state.json")
    assert aside.read_bytes() == garbled
    state = json.loads(state_file.read_text())
    assert state["turn"] is None and state["queue"] == [] and state["repaired"] is None  # told once
    messages = json.loads((data / "users/alice/conversations/cs1.json").read_text())["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["first", "second"]  # the history lives on


def test_an_unreadable_session_record_is_set_aside_and_setup_rebuilds_it(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, data = harness
    token = first_turn(client, management, fake, "cs2")
    dispatcher.join(30)
    record = data / "sessions/cs2/session.json"
    record.write_bytes(b'{"sessionId": "cs2", "userId": ')
    refused = client.lambda_.invoke("ws_connect", ws_event("$connect", "c2", query={"sessionId": "cs2", "token": token}))
    assert refused.payload["statusCode"] == 404
    assert json.loads(refused.payload["body"])["code"] == "session_repaired"
    assert set_aside(data, "sessions/cs2/session.json")[0].read_bytes() == b'{"sessionId": "cs2", "userId": '
    fresh = setup_session(client, "cs2")  # 200, not 409 concurrent_setup forever
    assert connect(client, "c3", "cs2", fresh) == 200
    fake.script(Reply([Text("Back.")]))
    message(client, "c3", "again")
    assert management.wait_for("c3", "result")[-1]["stopReason"] == "end_turn"
    dispatcher.join(30)
    messages = json.loads((data / "users/alice/conversations/cs2.json").read_text())["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["first", "again"]


def test_an_unreadable_conversation_is_never_overwritten(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, data = harness
    first_turn(client, management, fake, "cs3")
    dispatcher.join(30)
    conversation = data / "users/alice/conversations/cs3.json"
    truncated = conversation.read_bytes()[:-20]
    conversation.write_bytes(truncated)
    fake.script(Reply([Text("This must not replace the history.")]))
    management.sent.clear()
    message(client, "c1", "second")
    frames = management.wait_for("c1", "result", timeout=30)
    dispatcher.join(30)
    error = next(f for f in frames if f["event"] == "error")
    assert error["code"] == "conversation_unreadable" and "kept as it is" in error["message"], error
    assert len(fake.requests) == 1  # the model was not asked again
    assert conversation.read_bytes() == truncated
    history = client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "get_history"})))
    assert history is not None
    assert management.sent["c1"][-1]["code"] == "conversation_unreadable"


@pytest.mark.parametrize("damaged", ["root", "pack"])
def test_an_unreadable_snapshot_leaves_the_session_usable_with_an_empty_workspace(harness, damaged: str) -> None:  # type: ignore[no-untyped-def]
    from chalicelib.config import Settings
    from chalicelib.container import get_container
    from tests.support.api import ROOT

    client, management, fake, dispatcher, data = harness
    token = setup_session(client, "cs4")
    assert connect(client, "c1", "cs4", token) == 200
    fake.script(Reply([ToolUse("bash", {"command": "echo kept > /workspace/kept.txt"})]), Reply([Text("Saved.")]))
    message(client, "c1", "write a file")
    management.wait_for("c1", "result")
    dispatcher.join(30)
    root = data / "sessions/cs4/workspace/alice.manifest.json"
    snapshot = root if damaged == "root" else next((data / "sessions/cs4/workspace/alice").rglob("p-*"))
    truncated = snapshot.read_bytes()[: snapshot.stat().st_size // 2]
    snapshot.write_bytes(truncated)
    aside = root.read_bytes()
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
    # The sandbox is reaped: the next turn makes a new one and restores it from the snapshot.
    assert get_container(Settings.from_env({**os.environ, **stage_env})).sandboxes.destroy("cs4")

    for attempt in ("first", "second"):
        fake.script(Reply([ToolUse("bash", {"command": "ls /workspace; echo ok"})]), Reply([Text("Listed.")]))
        management.sent.clear()
        message(client, "c1", f"{attempt} look")
        frames = management.wait_for("c1", "result", timeout=60)
        dispatcher.join(30)
        assert frames[-1]["stopReason"] == "end_turn", frames
        assert not [f for f in frames if f["event"] == "error"], frames
        listing = next(f for f in frames if f["event"] == "tool_result")["content"]
        assert "kept.txt" not in listing and "ok" in listing
        if attempt == "first":
            reset = next(f for f in frames if f.get("status") == "workspace_not_restored")
            assert "could not be restored" in reset["message"] and "empty" in reset["message"]
        else:
            assert not [f for f in frames if f.get("status") == "workspace_not_restored"]  # told once
    # Set aside where the files API still reads it (?snapshot=unrestored) and no save replaces it.
    assert (data / "sessions/cs4/workspace/alice.unrestored.manifest.json").read_bytes() == aside
    assert not root.exists()
    if damaged == "pack":
        assert snapshot.read_bytes() == truncated  # kept for the unrestored root, not swept


def test_a_dead_turn_over_an_unreadable_conversation_is_closed_not_retried_forever(harness) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_turn_takeover import stage_dead_runner

    client, management, fake, dispatcher, data = harness
    token = setup_session(client, "cs5")
    stage_dead_runner(data, "cs5", lease_left=-1)
    conversation = data / "users/alice/conversations/cs5.json"
    conversation.write_bytes(b'{"conversationId": "cs5", "messages": [')
    assert connect(client, "c1", "cs5", token) == 200  # starts a runner: the lease ran out, it repairs
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "resume", "afterSeq": 0})))
    dispatcher.join(30)
    frames = management.sent.get("c1", [])
    assert any(f["event"] == "error" and f["code"] == "conversation_unreadable" for f in frames), frames
    state = json.loads((data / "sessions/cs5/state.json").read_text())
    assert state["turn"] is None, state  # closed, not left for the next runner to fail on again
    assert conversation.read_bytes() == b'{"conversationId": "cs5", "messages": ['
