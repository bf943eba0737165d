"""./scripts/chat in a real terminal (tmux): a multi-line paste is one prompt, and after Ctrl-C
the result line says "interrupted" once, after the partial text."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.fake_anthropic import Endless, Reply, Text
from tests.support.api import ROOT
from tests.support.scrubbed_env import scrubbed_env

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


class Terminal:
    """One tmux server of our own (its own socket), one window running the command."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], check=True, capture_output=True, text=True, timeout=10).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "chat")

    def wait_for(self, check: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if check(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"no {what} on the screen:\n{self.screen()}")


@pytest.fixture
def terminal(world, tmp_path: Path) -> Iterator[Terminal]:  # type: ignore[no-untyped-def]
    term = Terminal(tmp_path / "tmux.sock")
    env = scrubbed_env(tmp_path / "home", {"TERM": "xterm-256color"})
    command = f"./scripts/chat --url {world.url} --user typist; sleep 60"
    subprocess.run(["tmux", "-S", str(term.socket), "new-session", "-d", "-s", "chat", "-x", "200", "-y", "50", command],
                   cwd=ROOT, env=env, check=True, timeout=10)
    try:
        yield term
    finally:
        term.tmux("kill-server")


def test_a_paste_is_one_prompt_and_an_interrupt_is_said_once(world, terminal: Terminal) -> None:  # type: ignore[no-untyped-def]
    terminal.wait_for(lambda s: "you>" in s, "prompt")
    world.fake.script(Reply([Text("One prompt received.")]))
    # A paste as a terminal delivers it: between bracketed-paste markers (tmux adds them with -p
    # only when the program asked for them), then Enter.
    terminal.tmux("set-buffer", "-b", "clip", "Step one: read the logs\nStep two: bisect\nStep three: fix")
    terminal.tmux("paste-buffer", "-p", "-d", "-b", "clip", "-t", "chat")
    time.sleep(0.5)
    assert world.fake.requests == []  # the paste's newlines sent nothing
    terminal.tmux("send-keys", "-t", "chat", "Enter")
    terminal.wait_for(lambda s: "model reply" in s, "result line")
    assert len(world.fake.requests) == 1  # one turn, not three
    prompt = world.fake.requests[0]["messages"][-1]["content"]
    text = prompt if isinstance(prompt, str) else "".join(b.get("text", "") for b in prompt)
    assert text == "Step one: read the logs\nStep two: bisect\nStep three: fix"
    assert "200~" not in terminal.screen()  # the markers print nothing

    # Ctrl-C mid-answer: the partial text, then the result line, saying "interrupted" once.
    world.fake.script(Endless(delta="word ", delay=0.02, max_deltas=20_000))
    terminal.tmux("send-keys", "-t", "chat", "talk forever", "Enter")
    terminal.wait_for(lambda s: s.count("word") > 20, "streamed text")
    terminal.tmux("send-keys", "-t", "chat", "C-c")
    screen = terminal.wait_for(lambda s: s.count("model repl") == 2 and "you>" in s.rsplit("model repl", 1)[1], "second result line")
    result = [line for line in screen.splitlines() if "model repl" in line][-1]
    assert result.count("interrupted") == 1, result
    after = screen.split(result, 1)[1]
    assert "word" not in after  # no text after the result line
    before = screen.split("talk forever", 1)[1].split(result, 1)[0]
    assert re.fullmatch(r"\s*(word ?)+\s*", before), before  # nothing interleaved with the partial text
    assert "interrupting" not in screen
