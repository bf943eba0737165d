"""A newcomer with no AWS configuration and no key: ./scripts/dev --offline-model, then the web
console in a real Chromium (Debian's), gives a streamed answer with a tool call, labelled as the
stand-in. The server runs in a scrubbed environment (PATH, a fresh HOME, the port and the data
and sandbox folders under tmp_path): no AWS_* and no ANTHROPIC_* variables.

The screenshot goes to test-artifacts/console-offline.png (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.scrubbed_env import ROOT, DevServer, running_scripts_dev

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]
ARTIFACTS = ROOT / "test-artifacts"
# Assertions wait up to 15 s (Playwright's default is 5): a first turn makes a sandbox, which
# takes seconds on a loaded machine.
EXPECT_TIMEOUT_MS = 15_000
LISTING = "ls -R /workspace/.claude/skills"


def mounts_under(path: Path) -> list[str]:
    """Mount points below `path`, deepest first."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return sorted((p for p in points if p.startswith(f"{path}/")), key=len, reverse=True)


def remove_sandboxes(root: Path) -> None:
    """Delete the sandboxes a stopped server left, as a cleanup job would: detach, then remove.

    Stopping ./scripts/dev (SIGTERM) leaves each session's workspace, a tmpfs mount, in place: left
    alone, every run would add a mount that pytest cannot delete.
    """
    from chalicelib.sandbox.linux import umount_lazy

    for point in mounts_under(root):
        umount_lazy(point)
    shutil.rmtree(root, ignore_errors=True)
    assert mounts_under(root) == [] and not root.exists(), f"sandboxes left under {root}"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    """./scripts/dev --offline-model, scrubbed; stopped with SIGTERM (and awaited) whatever happens,
    then its sandboxes removed."""
    try:
        with running_scripts_dev(tmp_path, "--offline-model") as server:
            yield server
        with pytest.raises(ProcessLookupError):
            os.killpg(server.proc.pid, 0)  # nothing of the server's process group is left
        assert "OFFLINE STAND-IN" in server.output and "Traceback" not in server.output, server.output[-4000:]
    finally:
        remove_sandboxes(tmp_path / "sb")


def test_console_answers_with_the_offline_stand_in(dev: DevServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    console_errors: list[str] = []
    bad_responses: list[str] = []
    streamed: list[str] = []  # the text pieces of `stream` frames, as the browser received them

    def on_websocket(ws: Any) -> None:
        def frame(payload: str | bytes) -> None:
            event = json.loads(payload)
            if event.get("event") == "stream" and event.get("type") != "thinking":
                streamed.append(event["content"])
        ws.on("framereceived", frame)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.set_default_timeout(30000)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
            page.on("response", lambda r: bad_responses.append(f"{r.status} {r.request.method} {r.url}")
                    if r.status >= 400 else None)
            page.on("websocket", on_websocket)
            page.goto(dev.url + "/")

            # The page asks /health, which says the model is the stand-in.
            expect(page.locator("#offline-badge")).to_be_visible()
            expect(page.locator("#offline-badge")).to_have_text("Offline stand-in - not Claude")
            page.fill("#user-id", "newcomer")
            page.get_by_role("button", name="Load user").click()
            expect(page.locator("#start-session")).to_be_enabled()
            page.get_by_role("tab", name="Skills").click()
            page.get_by_role("button", name="Add a sample skill").click()
            expect(page.locator("#skill-status")).to_contain_text("Sample skill added")
            expect(page.locator("#skills")).to_contain_text("debugging.md")
            page.get_by_role("button", name="Close Skills").click()
            page.get_by_role("button", name="Start session").click()
            expect(page.locator("#transcript")).to_contain_text("Ready")
            expect(page.locator("#skills-loaded")).to_contain_text("/workspace/.claude/skills/debugging.md")
            expect(page.locator("#prompt")).to_be_enabled()

            page.fill("#prompt", "How should I debug a failing deploy?")
            page.get_by_role("button", name="Send").click()
            result = page.locator("#transcript .result")
            expect(result).to_contain_text("3 turns")  # list, read, answer
            expect(result).to_contain_text("0 in / 0 out tokens")

            # The tool calls really ran in the sandbox: their inputs and outputs are in the transcript.
            tools = page.locator("#transcript details.tool")
            expect(tools).to_have_count(2)
            listing = tools.nth(0)
            expect(listing.locator("summary")).to_contain_text("bash")
            expect(listing.locator(".tool-input")).to_contain_text(LISTING)
            expect(listing.locator(".tool-result")).to_contain_text("/workspace/.claude/skills:")
            expect(listing.locator(".tool-result")).to_contain_text("debugging.md")
            reading = tools.nth(1)
            expect(reading.locator(".tool-input")).to_contain_text("cat /workspace/.claude/skills/debugging.md")
            expect(reading.locator(".tool-result")).to_contain_text("When the user reports a bug")
            listing.locator("summary").click()  # open, for the screenshot

            # Streamed assistant text, each reply labelled as the stand-in.
            replies = page.locator("#transcript .msg.assistant")
            expect(replies.first).to_contain_text("[offline stand-in, not Claude] Let me look at your skills first.")
            answer = replies.last
            expect(answer).to_contain_text("This answer comes from the local offline stand-in, not from Claude.")
            expect(answer).to_contain_text("found 1 file: debugging.md")
            expect(answer).to_contain_text("\u201c# Debugging\u201d")
            # It streamed: the answer came in many small pieces, which the page joined.
            assert len(streamed) > 10, streamed
            assert "found 1 file: debugging.md" in "".join(streamed)
            expect(page.locator("#transcript .error-card")).to_have_count(0)
            expect(page.locator("#banner")).to_be_hidden()
            expect(page.locator("#offline-badge")).to_be_visible()

            ARTIFACTS.mkdir(exist_ok=True)
            page.evaluate("const t = document.getElementById('transcript'); t.scrollTop = t.scrollHeight")
            page.screenshot(path=str(ARTIFACTS / "console-offline.png"))
            assert (ARTIFACTS / "console-offline.png").stat().st_size > 5_000
        finally:
            browser.close()
    assert console_errors == [], console_errors
    assert bad_responses == [], bad_responses
