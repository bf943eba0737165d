"""Item 3 of issue 11: kill -9 of ./scripts/dev in the middle of a turn, then a restart.

The server runs as a subprocess with a scrubbed environment (PATH, HOME and what the test
sets), the model is the fake Messages API in this process, and the turn is inside a slow
bash call when the whole process group gets SIGKILL. After a restart on the same data
directory the client reconnects and resumes: the dead turn is repaired (its tool call answered
as cut off), the client hears `error` + `result` with seqs above everything it saw, the next
message runs, and the saved conversation has no unanswered tool_use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text, ToolUse
from tests.support.gateway import receive_until
from tests.support.sandbox_host import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@contextmanager
def dev_server(port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """./scripts/dev in its own process group; yields once /health answers."""
    with log.open("ab") as out:
        proc = subprocess.Popen(["./scripts/dev", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(600):  # bounded: 60 s
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("./scripts/dev did not start:\n" + log.read_text()[-3000:])
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def frames_until(ws: Any, predicate: Any, timeout: float) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        if predicate(frames[-1]):
            return frames
    raise AssertionError(f"timed out; got {[f['event'] for f in frames]}")


def test_kill_9_mid_turn_then_restart_recovers_the_session(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev.log"
    with FakeAnthropic() as fake:
        env = {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
            "DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb"),
            "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_MAX_RETRIES": "1",
        }
        fake.script(Reply([Text("Running the slow job."), ToolUse("bash", {"command": "sleep 60; echo never"})]))
        with dev_server(port, env, log) as first:
            assert httpx.post(f"{api}/users/alice/skills", json={"name": "notes.md", "content": "# Notes\n\nKeep."}).status_code == 200
            setup = httpx.post(f"{api}/setup/sess-kill?userId=alice").json()
            ws_url = f"{setup['websocketUrl']}&token={setup['token']}"
            with connect(ws_url) as ws:
                ws.send(json.dumps({"action": "message", "prompt": "run the slow job"}))
                seen = receive_until(ws, "tool_use", timeout=30)
                time.sleep(0.5)  # the tool call is running in the sandbox now
                os.killpg(first.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                first.wait(timeout=10)
                with pytest.raises(ConnectionClosed):
                    for _ in range(1000):
                        seen.append(json.loads(ws.recv(timeout=10)))
        last_seq = max(f["seq"] for f in seen)
        state = json.loads((tmp_path / "data/sessions/sess-kill/state.json").read_text())
        assert state["turn"] is not None  # the dead runner left the session "running"

        fake.script(Reply([Text("Back again.")]))
        with dev_server(port, env, log):
            restarted_at = time.monotonic()
            # No client yet: the restarted server finds the session it left running by itself.
            for _ in range(400):  # bounded: 40 s
                state = json.loads((tmp_path / "data/sessions/sess-kill/state.json").read_text())
                if state["turn"] is None:
                    break
                time.sleep(0.1)
            recovered_at = time.monotonic()
            assert state["turn"] is None, state
            with connect(ws_url) as ws:
                ws.send(json.dumps({"action": "resume", "afterSeq": last_seq}))
                repaired = frames_until(ws, lambda f: f["event"] == "status" and f.get("status") == "resumed", timeout=20)
                ws.send(json.dumps({"action": "message", "prompt": "are you there?"}))
                after = receive_until(ws, "result", timeout=30)
        print(f"\nrecovery without a client: {recovered_at - killed_at:.1f} s after kill -9, "
              f"{recovered_at - restarted_at:.1f} s after the restarted server answered /health")

    events = [f["event"] for f in repaired]
    assert "tool_result" in events and "error" in events and "result" in events, repaired
    cut = next(f for f in repaired if f["event"] == "tool_result")
    assert cut["is_error"] and "cut off" in cut["content"]
    assert next(f for f in repaired if f["event"] == "error")["code"] == "turn_cut_off"
    numbered = [f["seq"] for f in repaired + after if f["seq"]]
    assert numbered and min(numbered) > last_seq and numbered == sorted(numbered), (last_seq, numbered)
    assert after[-1]["stopReason"] == "end_turn"
    assert any(f.get("status") == "sandbox_recreated" for f in after)  # the new process had no sandbox for it
    body = json.loads((tmp_path / "data/users/alice/conversations/sess-kill.json").read_text())
    saved = body["messages"]
    calls = [b["id"] for m in saved if m["role"] == "assistant" and isinstance(m["content"], list)
             for b in m["content"] if b["type"] == "tool_use"]
    answers = [b["tool_use_id"] for m in saved if m["role"] == "user" and isinstance(m["content"], list)
               for b in m["content"] if b["type"] == "tool_result"]
    assert calls and calls == answers
    assert saved[-1] == {"role": "assistant", "content": [{"type": "text", "text": "Back again."}]}
    # The API got a valid history: the cut-off call's result first, then the new prompt.
    last_user = fake.requests[-1]["messages"][-1]["content"]
    assert [b["type"] for b in last_user] == ["tool_result", "text"] and last_user[1]["text"] == "are you there?"
    state = json.loads((tmp_path / "data/sessions/sess-kill/state.json").read_text())
    assert state["turn"] is None and state["queue"] == [] and state["lastSeq"] >= max(numbered)
