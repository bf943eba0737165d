"""A newcomer with no AWS configuration and no key: ./scripts/dev --offline-model, then
./scripts/chat, gives a streamed answer with a tool call, labelled as the stand-in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.scrubbed_env import ROOT, running_scripts_dev, scrubbed_env

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_offline_model_answers_through_scripts_dev_and_scripts_chat(tmp_path: Path) -> None:
    with running_scripts_dev(tmp_path, "--offline-model") as dev:
        health = httpx.get(dev.url + "/health").json()
        assert health["offlineModel"] is True and health["hasAnthropicKey"] is True
        skill = {"name": "debugging.md", "content": "# Debugging Skill\n\nRead the logs first, then bisect."}
        assert httpx.post(f"{dev.url}/users/alice/skills", json=skill).status_code == 200
        result = subprocess.run(["./scripts/chat", "--user", "alice", "How should I debug a failing deploy?"], cwd=ROOT,
                                env=scrubbed_env(tmp_path / "chat-home", {"AGENT_API_URL": dev.url}),
                                capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "⚙ bash {\"command\": \"ls -R /workspace/.claude/skills\"}" in out
    assert "⚙ bash {\"command\": \"cat /workspace/.claude/skills/debugging.md\"}" in out
    assert "→ /workspace/.claude/skills:" in out and "→ # Debugging Skill" in out  # the tools really ran in the sandbox
    assert "not from Claude" in out and "found 1 file: debugging.md" in out and "\u201c# Debugging Skill\u201d" in out
    assert "[offline stand-in model (./scripts/dev --offline-model): canned replies, not Claude]" in result.stderr
    assert "3 model replies" in result.stderr and "0 in / 0 out tokens, $0.0000" in result.stderr
    assert out.count("[offline stand-in, not Claude]") == 3  # every reply says what it is
    assert "OFFLINE STAND-IN" in dev.output and "Traceback" not in dev.output
