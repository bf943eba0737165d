"""scripts/chat against the local gateway and the fake model."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.api import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_chat_streams_an_answer_and_shows_tool_calls(world) -> None:  # type: ignore[no-untyped-def]
    world.http.post("/users/zed/skills", json={"name": "notes.md", "content": "# Notes\n\nRemember the milk."})
    world.fake.script(Reply([ToolUse("bash", {"command": "cat /workspace/.claude/skills/notes.md"})]), Reply([Text("You must remember the milk.")]))
    result = subprocess.run([sys.executable, "-m", "scripts.chat", "--url", world.url, "--user", "zed", "What do my notes say?"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "You must remember the milk." in result.stdout
    assert "⚙ bash" in result.stdout and "Remember the milk." in result.stdout
    assert "r2_load_dev, 1 skill files" in result.stderr and "2 turns" in result.stderr


def test_chat_says_when_the_server_is_down() -> None:
    result = subprocess.run([sys.executable, "-m", "scripts.chat", "--url", "http://127.0.0.1:9", "--user", "zed", "hi"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Is ./scripts/dev running?" in result.stderr


def test_chat_asks_on_the_terminal_before_a_tool_the_user_wants_to_approve(world) -> None:  # type: ignore[no-untyped-def]
    assert world.http.put("/users/yan/settings", json={"permissions": {"bash": "ask"}}).status_code == 200
    world.fake.script(Reply([ToolUse("bash", {"command": "echo first-ran"})]), Reply([ToolUse("bash", {"command": "echo second-ran"})]),
                      Reply([ToolUse("bash", {"command": "echo third-ran"})]), Reply([Text("All done.")]))
    # "maybe" is not an answer (asked again), then yes once, then no, then always.
    result = subprocess.run([sys.executable, "-m", "scripts.chat", "--url", world.url, "--user", "yan", "run three things"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, input="maybe\ny\nn\nalways\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Allow this? [y]es / [n]o / [a]lways for this session:") == 4
    assert "? bash {\"command\": \"echo first-ran\"}" in result.stdout and "Answer y, n or always." in result.stdout
    assert "→ first-ran" in result.stdout and "→ third-ran" in result.stdout and "→ second-ran" not in result.stdout
    assert "The user declined this bash call" in result.stdout
    assert "All done." in result.stdout
    declined = world.fake.requests[2]["messages"][-1]["content"][0]
    assert declined["type"] == "tool_result" and declined["is_error"] is True
