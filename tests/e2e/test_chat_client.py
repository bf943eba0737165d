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
