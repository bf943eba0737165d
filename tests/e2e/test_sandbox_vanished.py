"""Item 4 of issue 11: a workspace deleted underneath a session.

The sandbox's folder is removed by hand (as a cleanup job or a person would), between turns
and in the middle of a turn. The next tool call finds it gone, a new sandbox is made with the
skills loaded again and the files restored from the last workspace snapshot (issue 15;
`status: sandbox_recreated`), and the call runs; a new `/setup` repairs a broken sandbox by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

SKILL = "# Notes\n\nThe password hint is 'blue'."


def _delete(root: Any) -> None:
    """Delete a sandbox's folder as a cleanup job would: its workspace is a tmpfs mount (the disk
    limit), so detach that first, then remove everything."""
    workspace = root / "workspace"
    if os.path.ismount(workspace):
        subprocess.run(["umount", "-l", str(workspace)], check=True, timeout=30)
    shutil.rmtree(root)


def _settled(world: Any, session: str) -> None:
    """Wait until the runner has finished the turn: its workspace snapshot is saved after the
    `result` frame, before the turn is marked finished in the session state."""
    state = world.data_dir / "sessions" / session / "state.json"
    deadline = time.monotonic() + 30
    while not state.exists() or json.loads(state.read_text()).get("turn") is not None:
        assert time.monotonic() < deadline, "the turn was not marked finished"
        time.sleep(0.05)


READ_SKILL = {"command": "cat /workspace/.claude/skills/notes.md && touch /workspace/made-here && ls /workspace"}


def test_a_deleted_workspace_is_recreated_between_and_during_turns(world) -> None:  # type: ignore[no-untyped-def]
    assert world.http.post("/users/alice/skills", json={"name": "notes.md", "content": SKILL}).status_code == 200
    setup = world.setup("sess-gone", "alice")
    root = world.data_dir.parent / "sandboxes" / "sess-gone"
    assert root.is_dir()

    def delete_then_call(_: dict[str, Any]) -> Reply:
        _delete(root)  # while the turn runs, between two tool calls
        return Reply([ToolUse("bash", READ_SKILL)])

    world.fake.script(Reply([ToolUse("bash", {"command": "echo first > /workspace/first"})]), Reply([Text("ok")]),
                      Reply([ToolUse("bash", READ_SKILL)]), Reply([Text("read it")]),
                      Reply([ToolUse("bash", {"command": "echo before"})]), delete_then_call, Reply([Text("again")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "one"}))
        first = receive_until(ws, "result")
        _settled(world, "sess-gone")
        _delete(root)  # between turns
        ws.send(json.dumps({"action": "message", "prompt": "two"}))
        second = receive_until(ws, "tool_use")
        asked = time.monotonic()
        second += receive_until(ws, "tool_result")
        print(f"\ndeleted workspace: the tool call ran in a recreated sandbox {time.monotonic() - asked:.2f} s after it was asked")
        second += receive_until(ws, "result")
        ws.send(json.dumps({"action": "message", "prompt": "three"}))
        third = receive_until(ws, "result")

    assert first[-1]["stopReason"] == "end_turn"
    for frames in (second, third):
        recreated = [f for f in frames if f["event"] == "status" and f.get("status") == "sandbox_recreated"]
        assert len(recreated) == 1 and recreated[0]["seq"] > 0
        assert recreated[0]["skillsLoaded"] == ["/workspace/.claude/skills/notes.md"]
        result = [f for f in frames if f["event"] == "tool_result"][-1]
        assert not result["is_error"] and "The password hint is 'blue'." in result["content"]
        assert "first\nmade-here\n" in result["content"]  # a new workspace, its files restored from the snapshot
        assert frames[-1]["stopReason"] == "end_turn"
    assert root.is_dir()


def test_a_new_setup_repairs_a_deleted_workspace(world) -> None:  # type: ignore[no-untyped-def]
    assert world.http.post("/users/alice/skills", json={"name": "notes.md", "content": SKILL}).status_code == 200
    world.setup("sess-resetup", "alice")
    root = world.data_dir.parent / "sandboxes" / "sess-resetup"
    _delete(root)
    setup = world.setup("sess-resetup", "alice")
    assert setup["skillsLoaded"] == ["/workspace/.claude/skills/notes.md"]
    assert (root / "workspace/.claude/skills/notes.md").read_text() == SKILL
    world.fake.script(Reply([ToolUse("bash", READ_SKILL)]), Reply([Text("fine")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "read"}))
        frames = receive_until(ws, "result")
    assert not any(f.get("status") == "sandbox_recreated" for f in frames)  # setup already made it whole
    result = next(f for f in frames if f["event"] == "tool_result")
    assert not result["is_error"] and "The password hint is 'blue'." in result["content"]
