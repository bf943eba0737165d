"""A dead runner's turn, taken over: through `$connect`, and through a `message` sent while the
dead runner's lease still holds. The dead runner is staged in storage exactly as one leaves it
(a state that says running, a conversation ending in an unanswered tool call, logged events),
so each path is tested deterministically; tests/e2e/test_kill_dev_mid_turn.py kills a real one.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib.realtime.state import QueuedPrompt, RunningTurn, SessionState, utcnow
from chalicelib.storage.local import LocalDirectoryStore
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def stage_dead_runner(data: Path, session: str, *, lease_left: float, prompt_saved: bool = True) -> None:
    """What a runner killed inside a tool call leaves behind."""
    store = LocalDirectoryStore(data)
    now = utcnow()
    prompt = QueuedPrompt(id="p-dead", prompt="run the job")
    turn = RunningTurn(turn_id="t-dead", runner_id="gone", prompt_id=prompt.id, started_at=now - timedelta(seconds=30),
                       heartbeat_at=now - timedelta(seconds=20), lease_until=now + timedelta(seconds=lease_left), prompt=prompt)
    state = SessionState(session_id=session, user_id="alice", conversation_id=session, started=True, turn=turn,
                         last_seq=3, seq_ceiling=10_003)
    store.put(f"sessions/{session}/state.json", state.model_dump_json(by_alias=True).encode())
    if prompt_saved:
        messages = [{"role": "user", "content": "run the job"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_dead", "name": "bash", "input": {"command": "sleep 99"}}]}]
        store.put(f"users/alice/conversations/{session}.json", json.dumps(
            {"conversationId": session, "messages": messages, "metadata": {"lastPromptId": "p-dead"}}).encode())
    store.put(f"sessions/{session}/events/t-dead/0000000004.json", json.dumps(
        [{"event": "status", "seq": 4, "status": "running", "turnId": "t-dead"},
         {"event": "tool_use", "seq": 57, "id": "toolu_dead", "name": "bash", "input": {"command": "sleep 99"}}]).encode())


def frames_of(management: Any, connection: str, until: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames = list(management.sent.get(connection, []))
        if until(frames):
            return frames
        time.sleep(0.05)
    raise AssertionError(f"timed out: {management.sent.get(connection)}")


def test_connect_takes_over_a_turn_whose_lease_ran_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "dead1")
        stage_dead_runner(tmp_path / "data", "dead1", lease_left=-1)
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "dead1", "token": token}))
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "resume", "afterSeq": 4})))
        frames = frames_of(management, "c1", lambda fs: any(f["event"] == "result" for f in fs))
        dispatcher.join(30)
    # (a `status: resumed` comes too when the repair finished before the resume was handled)
    frames = [f for f in frames if f["event"] != "status"]
    assert [f["event"] for f in frames] == ["tool_use", "tool_result", "error", "result"]
    assert frames[0]["seq"] == 57  # the missed event, replayed from the dead turn's log
    assert all(f["seq"] > 10_003 for f in frames[1:])  # above the high-water mark, not above last_seq
    assert frames[1]["is_error"] and frames[2]["code"] == "turn_cut_off"
    assert fake.requests == []  # the prompt had been saved: it is not run again
    saved = json.loads((tmp_path / "data/users/alice/conversations/dead1.json").read_text())["messages"]
    assert saved[-1]["content"][0]["tool_use_id"] == "toolu_dead" and saved[-1]["content"][0]["is_error"]
    state = json.loads((tmp_path / "data/sessions/dead1/state.json").read_text())
    assert state["turn"] is None and state["lastTurnId"] == "t-dead" and state["lastSeq"] == frames[-1]["seq"]


def test_a_message_during_a_dead_lease_waits_it_out_then_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_LEASE_SECONDS", "3")
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "dead2")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "dead2", "token": token}))
        # Killed before it saved the prompt; its lease still holds for 2 s, its last renewal is overdue.
        stage_dead_runner(tmp_path / "data", "dead2", lease_left=2, prompt_saved=False)
        fake.script(Reply([Text("Ran the job.")]), Reply([Text("And the second one.")]))
        started = time.monotonic()
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "second"})))
        frames = frames_of(management, "c1", lambda fs: sum(f["event"] == "result" for f in fs) == 3)
        took = time.monotonic() - started
        dispatcher.join(30)
    print(f"\ndead lease: queue moved on {took:.1f} s after the message")
    assert took >= 1.5  # it waited for the lease
    errors = [f for f in frames if f["event"] == "error"]
    assert [e["code"] for e in errors] == ["turn_cut_off"] and "runs again" in errors[0]["message"]
    prompts = [text_of(r["messages"][-1]["content"]) for r in fake.requests]
    assert prompts == ["run the job", "second"]  # the unsaved prompt ran again, first
    saved = json.loads((tmp_path / "data/users/alice/conversations/dead2.json").read_text())["messages"]
    assert [m["content"] if m["role"] == "user" else m["content"][0]["text"] for m in saved] == [
        "run the job", "Ran the job.", "second", "And the second one."]


def text_of(content: str | list[dict[str, object]]) -> str:
    """A message's text, whether sent as a string or as blocks (prompt caching marks the latest)."""
    return content if isinstance(content, str) else "".join(str(b.get("text", "")) for b in content)
