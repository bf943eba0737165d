"""The console rejoins its session by itself after a server restart: ./scripts/dev is stopped
for 10 s and started again on the same port and data, and the page (Debian's Chromium) is back
in the same session, with `resume`, well within 30 s, showing nothing twice."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.e2e.test_console_browser import CHROMIUM, EXPECT_TIMEOUT_MS, pytestmark  # noqa: F401 - the same skips
from tests.e2e.test_console_offline import remove_sandboxes
from tests.e2e.test_kill_dev_mid_turn import dev_server
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text
from tests.support.sandbox_host import free_port

DOWN_SECONDS = 10


def test_console_rejoins_the_same_session_after_a_server_restart(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    port = free_port()
    log = tmp_path / "dev.log"
    sent: list[dict[str, Any]] = []
    console_errors: list[str] = []

    def on_websocket(ws: Any) -> None:
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))

    try:
        with FakeAnthropic() as fake, sync_playwright() as pw:
            env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
                   "DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb"),
                   "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_MAX_RETRIES": "1"}
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.set_default_timeout(30000)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
            page.on("websocket", on_websocket)
            fake.script(Reply([Text("First answer.")]))
            with dev_server(port, env, log) as first:
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#user-id", "phoenix")
                page.click("#connection button[type=submit]")
                page.click("#start-session")
                expect(page.locator("#prompt")).to_be_enabled(timeout=30000)
                session = page.evaluate("window.consoleApp.state.session.sessionId")
                page.fill("#prompt", "before the restart")
                page.keyboard.press("Enter")
                expect(page.locator("#transcript .result")).to_have_count(1, timeout=30000)
                os.killpg(first.pid, signal.SIGTERM)
                first.wait(timeout=30)
            expect(page.locator("#turn-badge")).to_contain_text("Reconnecting")
            time.sleep(DOWN_SECONDS)
            # Still trying after 10 s down, and nothing asked of the user.
            expect(page.locator("#turn-badge")).to_contain_text("Reconnecting")
            expect(page.locator("#banner")).to_be_hidden()
            fake.script(Reply([Text("Second answer, same session.")]))
            with dev_server(port, env, log):
                restarted = time.monotonic()
                expect(page.locator("#turn-badge")).to_have_text("Connected", timeout=30000)
                back_after = time.monotonic() - restarted
                assert page.evaluate("window.consoleApp.state.session.sessionId") == session
                resumes = [f for f in sent if f.get("action") == "resume"]
                assert resumes and resumes[-1]["afterSeq"] > 0, sent
                assert [f["action"] for f in sent].count("start") == 1  # rejoined, never started again
                page.fill("#prompt", "after the restart")
                page.keyboard.press("Enter")
                expect(page.locator("#transcript .result")).to_have_count(2, timeout=30000)
            transcript = page.locator("#transcript")
            expect(transcript.locator(".msg.user")).to_have_text(["before the restart", "after the restart"])
            expect(transcript.locator(".msg.assistant")).to_have_text(["First answer.", "Second answer, same session."])
            expect(transcript.locator(".note", has_text="Ready: conversation")).to_have_count(1)
            browser.close()
        print(f"\nback in the same session {back_after:.1f} s after the restarted server answered /health")
        assert back_after < 30
        assert console_errors == []
        saved = json.loads((tmp_path / f"data/users/phoenix/conversations/{session}.json").read_text())
        assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
    finally:
        remove_sandboxes(tmp_path / "sb")


def test_console_catches_up_on_a_turn_cut_off_by_a_crash_showing_nothing_twice(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    port = free_port()
    log = tmp_path / "dev.log"
    try:
        with FakeAnthropic() as fake, sync_playwright() as pw:
            env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
                   "DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb"),
                   "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_MAX_RETRIES": "1"}
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.set_default_timeout(30000)
            answer = "".join(f"part{i:03d} " for i in range(300))
            # The crash comes before the answer is saved, so the restarted server runs the message again.
            fake.script(Reply([Text(answer, chunks=300)], delay=0.05), Reply([Text("answered again after the restart")]))
            with dev_server(port, env, log) as first:
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#user-id", "crash")
                page.click("#connection button[type=submit]")
                page.click("#start-session")
                expect(page.locator("#prompt")).to_be_enabled(timeout=30000)
                page.fill("#prompt", "stream slowly")
                page.keyboard.press("Enter")
                expect(page.locator("#transcript .msg.assistant")).to_contain_text("part010", timeout=30000)
                os.killpg(first.pid, signal.SIGKILL)  # the server dies mid-answer
                first.wait(timeout=10)
            expect(page.locator("#turn-badge")).to_contain_text("Reconnecting")
            time.sleep(DOWN_SECONDS)
            shown = page.locator("#transcript .msg.assistant").inner_text()
            with dev_server(port, env, log):
                # The restarted server repairs the turn (after its lease); the page catches up by itself.
                # The message runs again (its answer was never saved); the rerun says so in its own
                # events, so the page hears it even when it reconnects after the repair. The repair's
                # `turn_cut_off` card shows only when the page was back before the repair ran.
                expect(page.locator("#transcript .msg.assistant").last).to_contain_text("answered again after the restart",
                                                                                         timeout=60000)
                expect(page.locator("#transcript")).to_contain_text("it runs again")
                expect(page.locator("#turn-badge")).to_have_text("Connected")
                cards = page.locator("#transcript .error-card").all_inner_texts()
            streamed = page.locator("#transcript .msg.assistant").all_inner_texts()
            browser.close()
        assert len(cards) <= 1 and all("turn_cut_off" in c for c in cards), cards
        # What streamed before the crash is there once, in order, and nothing was added to it; the
        # second run's answer has a bubble of its own.
        assert len(streamed) == 2 and streamed[0].strip() == shown.strip(), (shown, streamed)
        assert answer.startswith(streamed[0].strip())
        assert streamed[1].strip() == "answered again after the restart"
        assert len(fake.requests) == 2
    finally:
        remove_sandboxes(tmp_path / "sb")
