"""./scripts/chat against the local gateway and the fake model, run as a newcomer runs it: a
subprocess with only PATH, a fresh HOME and what each test sets."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.fake_anthropic import Endless, HttpError, Reply, Text, ToolUse
from tests.support.api import ROOT
from tests.support.scrubbed_env import scrubbed_env

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def chat(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./scripts/chat", *args], cwd=ROOT, env=scrubbed_env(tmp_path / "home", env),
                          capture_output=True, text=True, timeout=timeout)


def test_chat_streams_an_answer_and_shows_tool_calls(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world.http.post("/users/zed/skills", json={"name": "notes.md", "content": "# Notes\n\nRemember the milk."})
    world.fake.script(Reply([ToolUse("bash", {"command": "cat /workspace/.claude/skills/notes.md"})]), Reply([Text("You must remember the milk.")]))
    result = chat(tmp_path, "--user", "zed", "What do my notes say?", env={"AGENT_API_URL": world.url})  # no --url
    assert result.returncode == 0, result.stderr
    assert "You must remember the milk." in result.stdout
    assert "⚙ bash" in result.stdout and "Remember the milk." in result.stdout
    assert "of zed: r2_load_dev, 1 skill files" in result.stderr and "2 model replies" in result.stderr
    assert "offline stand-in" not in result.stderr


def test_chat_says_when_the_server_is_down(tmp_path: Path) -> None:
    result = chat(tmp_path, "--url", "http://127.0.0.1:9", "--user", "zed", "hi", timeout=60)
    assert result.returncode == 1 and "Is ./scripts/dev running?" in result.stderr


def test_chat_help_names_the_script_and_its_environment(tmp_path: Path) -> None:
    result = chat(tmp_path, "--help", timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: ./scripts/chat") and "chat.py" not in result.stdout
    assert "AGENT_API_URL" in result.stdout and "Ctrl-C" in result.stdout


@pytest.mark.parametrize("value", ["0", "-3"])
def test_chat_refuses_max_turns_below_one(tmp_path: Path, value: str) -> None:
    result = chat(tmp_path, "--user", "zed", "--max-turns", value, "hi", timeout=60)
    assert result.returncode == 2 and "would stop the agent before it answers: give 1 or more" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_exits_non_zero_after_a_model_error(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(HttpError(400, "invalid_request_error", "prompt is too long"))
    result = chat(tmp_path, "--url", world.url, "--user", "zed", "hi")
    assert "[error model_bad_request]" in result.stderr
    assert result.returncode == 1, result.stderr


def test_chat_exits_non_zero_when_the_turn_fails_without_a_result(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # the gateway runs in this process: the turn fails before the model
    started = time.monotonic()
    result = chat(tmp_path, "--url", world.url, "--user", "zed", "hi")
    assert "[error anthropic_api_key_missing]" in result.stderr
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 60  # it does not wait for a result that never comes


def _start_streaming_chat(world, tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:  # type: ignore[no-untyped-def]
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    proc = subprocess.Popen(["./scripts/chat", "--url", world.url, "--user", "zed", "talk forever"], cwd=ROOT,
                            env=scrubbed_env(tmp_path / "home"), stdout=out.open("w"), stderr=err.open("w"), text=True)
    deadline = time.monotonic() + 60
    while "word word" not in out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
        time.sleep(0.05)
    return proc, out, err


def test_ctrl_c_interrupts_the_turn_and_the_turn_ends_cleanly(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Endless(delay=0.02, max_deltas=20_000))
    proc, out, err = _start_streaming_chat(world, tmp_path)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    stderr = err.read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "interrupting" not in stderr  # no notice in the middle of the streamed text
    result = [line for line in stderr.splitlines() if "model repl" in line]
    assert len(result) == 1 and result[0].endswith("interrupted]") and result[0].count("interrupted") == 1, stderr
    assert code == 130
    assert world.fake.disconnects >= 1 or len(out.read_text().split()) < 20_000  # the model stream was cut short


def test_a_second_ctrl_c_quits_without_a_traceback(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Endless(delay=0.02, max_deltas=20_000))
    proc, _, err = _start_streaming_chat(world, tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=30)
    stderr = err.read_text()
    assert code == 130 and "[quit]" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


def test_an_unreachable_model_is_named_by_its_url(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ANTHROPIC_MAX_RETRIES", "0")
    result = chat(tmp_path, "--url", world.url, "--user", "zed", "hi")
    assert result.returncode == 1
    assert "[error model_unreachable] The Messages API at http://127.0.0.1:9 could not be reached: check ANTHROPIC_BASE_URL" in result.stderr
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


def test_chat_sends_each_message_with_its_own_id(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 21: a resend after a lost `queued` answer must be recognisable, so every message
    carries a fresh `messageId` (the session remembers it with the message's answer)."""
    world.fake.script(Reply([Text("One.")]))
    result = subprocess.run([sys.executable, "-m", "scripts.chat", "--url", world.url, "--user", "zed", "--session", "chat-ids",
                             "hi"], cwd=ROOT, env=scrubbed_env(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    state = json.loads((world.data_dir / "sessions/chat-ids/state.json").read_text())
    [accepted] = state["accepted"]
    assert accepted["id"].startswith("m-") and len(accepted["id"]) > 20


def test_chat_signs_in_with_a_user_token(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("API_KEY", "operator-key")
    monkeypatch.setenv("USER_TOKEN_SECRET", "user-token-secret-for-tests-0123456789")
    operator = {"Authorization": "Bearer operator-key"}
    yara = world.http.post("/users/yara/tokens", headers=operator).json()["token"]
    world.fake.script(Reply([Text("Hello, Yara.")]))
    result = chat(tmp_path, "--url", world.url, "--token", yara, "hi")  # no --user: the token's
    assert result.returncode == 0, result.stderr
    assert "Hello, Yara." in result.stdout and "of yara:" in result.stderr
    other = chat(tmp_path, "--url", world.url, "--user", "zed", "hi", env={"AGENT_USER_TOKEN": yara})
    assert other.returncode == 1 and "403" in other.stderr and "forbidden_user" in other.stderr
    assert world.http.get("/users/zed/conversations", headers=operator).json()["conversations"] == []
