"""The web console in a real Chromium (Debian's), against the local gateway and the fake model.

Screenshots go to test-artifacts/ (git-ignored); docs/console.png is only rewritten by
./scripts/update-screenshot, which copies test-artifacts/console-conversation.png.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.fakes.fake_anthropic import Endless, Reply, Text, ToolUse
from tests.support.api import ROOT
from tests.support.sandbox_host import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]
ARTIFACTS = ROOT / "test-artifacts"
# Assertions wait up to 15 s (Playwright's default is 5): a first turn makes a sandbox, which
# takes seconds on a loaded machine.
EXPECT_TIMEOUT_MS = 15_000
SKILL = "# Debugging Skill\n\nRead the logs first, then bisect the change."
MARKDOWN_REPLY = (
    "## Your debugging plan\n\nYour skill says: read the logs first, then bisect.\n\n"
    "1. Read the **logs**\n2. Bisect the change\n\n"
    "| Step | Tool |\n|---|---|\n| logs | `journalctl` |\n| bisect | `git bisect` |\n\n"
    "```bash\ngit bisect start  # then: git bisect bad HEAD\n```\n"
)
HOSTILE_REPLY = (
    "# Title\n\n<script>window.__pwned = 'script'</script>\n\n"
    "<img src=\"x\" onerror=\"window.__pwned = 'img'\">\n\n"
    "<a href=\"javascript:window.__pwned = 'link'\" id=\"evil-link\">click me</a>\n\n"
    "<p onclick=\"window.__pwned = 'click'\" id=\"evil-p\">text</p>\n\nSafe end."
)


@dataclass
class BrowserLog:
    """What the page reported: console errors and HTTP answers >= 400 (a 404 is a missing file)."""

    console_errors: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.bad_responses == [], self.bad_responses


@pytest.fixture
def log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture
def context(world) -> Iterator:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context
        context.close()
        browser.close()


@pytest.fixture
def page(world, context, log: BrowserLog) -> Iterator:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    page = context.new_page()
    page.set_default_timeout(20000)
    page.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.console_errors.append(f"uncaught: {e}"))
    page.on("response", lambda r: log.bad_responses.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None)
    page.goto(world.url + "/")
    yield page


def open_connection(page) -> None:  # type: ignore[no-untyped-def]
    """The connection form folds away once a user is loaded: its summary opens it again."""
    if not page.locator("#user-id").is_visible():
        page.click("#connection-summary")


def open_panel(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Skills, Settings, Files or History: one click on its tab (a second click closes it)."""
    from playwright.sync_api import expect

    tab = page.get_by_role("tab", name=name)
    if tab.get_attribute("aria-selected") != "true":
        tab.click()
    expect(page.locator(f"#{name.lower()}-panel")).to_be_visible()


def load_user(page, user: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    open_connection(page)
    page.fill("#user-id", user)
    page.click("#connection button[type=submit]")
    expect(page.locator("#start-session")).to_be_enabled()


def start_session(page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.click("#start-session")
    expect(page.locator("#transcript")).to_contain_text("Ready: conversation")
    expect(page.locator("#prompt")).to_be_enabled()


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=False)
    assert (ARTIFACTS / f"console-{name}.png").stat().st_size > 5_000


def test_skill_session_chat_interrupt_reload(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "webuser")
    # 1-2. create a skill and see it listed, with a confirmation
    open_panel(page, "Skills")
    page.fill("#skill-name", "debugging.md")
    page.fill("#skill-content", SKILL)
    page.click("#skill-form button[type=submit]")
    expect(page.locator("#skills")).to_contain_text("debugging.md")
    expect(page.locator("#skill-status")).to_contain_text("Saved debugging.md")
    open_panel(page, "Settings")
    page.fill("#set-system", "Answer briefly.")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#settings-status")).to_have_text("Saved ✓")
    # 3. start a session
    page.get_by_role("tab", name="Chat").click()
    start_session(page)
    expect(page.locator("#session-info")).to_contain_text("r2_load_dev")
    expect(page.locator("#session-files-summary")).to_have_text("1 skill file")
    expect(page.locator("#skills-loaded")).to_contain_text("/workspace/.claude/skills/debugging.md")
    # 4-5. a prompt; the answer streams as rendered markdown and a tool call reads the skill
    world.fake.script(
        Reply([Text("Let me read your skill."), ToolUse("str_replace_based_edit_tool", {"command": "view", "path": "/workspace/.claude/skills/debugging.md"})]),
        Reply([ToolUse("bash", {"command": "ls -a /workspace/.claude/skills"})]),
        Reply([Text(MARKDOWN_REPLY, chunks=12)], delay=0.02),
    )
    page.fill("#prompt", "How do I debug?")
    page.click("#send")
    expect(page.locator("#interrupt")).to_be_enabled()
    expect(page.locator("#transcript .result")).to_contain_text("3 turns")
    expect(page.locator("details.tool").nth(1).locator("summary")).to_contain_text(re.compile(r"bash: ls -a /workspace/\.claude/skills\s*· exit 0 · \d+\.\d s"))
    reply = page.locator("#transcript .msg.assistant").last
    expect(reply.locator("h2")).to_have_text("Your debugging plan")
    expect(reply.locator("ol li")).to_have_count(2)
    expect(reply.locator("table td")).to_have_count(4)
    expect(reply.locator("pre code")).to_have_text("git bisect start  # then: git bisect bad HEAD")
    expect(reply.locator("pre code .hljs-comment")).to_have_text("# then: git bisect bad HEAD")
    expect(reply.get_by_role("button", name="Copy code")).to_be_visible()
    tool = page.locator("details.tool").first
    expect(tool.locator("summary")).to_contain_text("edit: view .claude/skills/debugging.md")
    tool.locator("summary").click()
    expect(tool.locator(".tool-result")).to_contain_text("Read the logs first")
    # No "Sent." lines: statuses are a badge, and it is idle again.
    assert "Sent." not in (page.locator("#transcript").text_content() or "")
    expect(page.locator("#turn-badge")).to_have_text("Connected")
    expect(page.locator("#interrupt")).to_be_disabled()
    # ./scripts/update-screenshot copies these to docs/: the README's pictures, desktop and phone, light and dark.
    page.set_viewport_size({"width": 1280, "height": 800})
    bottom = "const t = document.getElementById('transcript'); t.scrollTop = t.scrollHeight"
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}  # mid-conversation, the tool call open
    tool.locator("summary").click()  # closed again: one line, as the pictures show it
    page.evaluate(bottom)
    shot(page, "conversation")
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(246, 246, 244)"
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}
    page.evaluate(bottom)
    shot(page, "conversation-dark")
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate(bottom)
    shot(page, "phone-conversation-dark")
    page.emulate_media(color_scheme="light")
    page.evaluate(bottom)
    shot(page, "phone-conversation")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.emulate_media(color_scheme="light")
    # 6. interrupt a long answer
    world.fake.script(Endless(delta="more ", delay=0.01, max_deltas=20000))
    page.fill("#prompt", "Talk for a long time")
    page.keyboard.press("Enter")
    expect(page.locator("#interrupt")).to_be_enabled()
    expect(page.locator("#transcript")).to_contain_text("more more more")
    page.click("#interrupt")
    expect(page.locator("#transcript .result").last).to_contain_text("interrupted")
    expect(page.locator("#interrupt")).to_be_disabled()
    expect(page.locator("#clear")).to_be_enabled()
    # 7. reload: the conversation is listed by its first prompt; reopen it read-only
    page.reload()
    open_panel(page, "History")
    conversation = page.get_by_role("button", name="Open conversation", exact=False).first
    expect(conversation).to_contain_text("How do I debug?")
    expect(conversation).to_contain_text("messages")
    conversation.click()
    expect(page.locator("#read-only")).to_contain_text("Read-only")
    expect(page.locator("#saved-transcript h2")).to_have_text("Your debugging plan")
    log.assert_clean()  # no console error (the user field's pattern included), no 404 (favicon included)


def test_keyboard_only_chat(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    world.fake.script(Reply([Text("Hello from the keyboard test.")]))
    open_connection(page)
    page.focus("#user-id")
    page.keyboard.type("keys")
    page.keyboard.press("Enter")  # submits the connection form
    expect(page.locator("#start-session")).to_be_enabled()
    page.focus("#start-session")
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_be_enabled()
    page.keyboard.press("Tab")  # start-session → ... the prompt is reachable by Tab
    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "prompt":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.type("hi")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .result")).to_contain_text("1 turn ·")
    expect(page.locator("#transcript")).to_contain_text("Hello from the keyboard test.")
    log.assert_clean()
    # Each message carries its own id, so a resend after a lost answer runs once (issue 21).
    [state_file] = list((world.data_dir / "sessions").glob("*/state.json"))
    [accepted] = json.loads(state_file.read_text())["accepted"]
    assert re.fullmatch(r"m-[0-9a-f]{24}", accepted["id"]), accepted


def test_every_server_event_is_rendered(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    frames = [
        {"event": "status", "seq": 0, "status": "ready", "conversationId": "c1", "continued": True, "messageCount": 1},
        {"event": "status", "seq": 0, "status": "queued", "messageId": "m1", "position": 0},
        {"event": "status", "seq": 1, "status": "running", "turnId": "t1"},
        {"event": "message", "seq": 2, "role": "user", "content": "hi", "uuid": "u1"},
        {"event": "stream", "seq": 3, "type": "thinking", "content": "Pondering the "},
        {"event": "stream", "seq": 4, "type": "thinking", "content": "question."},
        {"event": "stream", "seq": 5, "type": "text", "content": "Streamed "},
        {"event": "stream", "seq": 6, "type": "text", "content": "text."},
        {"event": "message", "seq": 7, "role": "assistant", "content": [{"type": "text", "text": "Streamed text."}], "uuid": "a1"},
        {"event": "tool_use", "seq": 8, "id": "tu1", "name": "bash", "input": {"command": "ls"}},
        {"event": "tool_result", "seq": 9, "tool_use_id": "tu1", "content": "file.txt", "is_error": False},
        {"event": "status", "seq": 10, "status": "compacted", "message": "Earlier messages were summarised."},
        {"event": "status", "seq": 11, "status": "max_turns_reached", "maxTurns": 1, "message": "Stopped after 1 model replies"},
        {"event": "result", "seq": 12, "turns": 1, "durationMs": 12, "usage": {"inputTokens": 5, "outputTokens": 6,
         "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0}, "costUsd": 0.0001, "model": "m", "stopReason": "max_turns", "interrupted": False},
        {"event": "stream", "seq": 12, "type": "text", "content": "DUPLICATE"},
        {"event": "error", "seq": 0, "code": "invalid_frame", "message": "Bad frame."},
    ]
    for frame in frames:
        page.evaluate("f => window.consoleApp.handleFrame(f)", frame)
    transcript = page.locator("#transcript")
    for needle in ("Ready: conversation c1 (1 earlier message)", "Streamed text.", "bash", "file.txt",
                   "Stopped after 1 model reply (maxTurns)", "Earlier messages were summarised.", "1 turn ·",
                   "$0.0001", "Error: invalid_frame", "Bad frame."):
        expect(transcript).to_contain_text(needle)
    assert "model replies" not in (transcript.text_content() or "")
    assert "Sent." not in (transcript.text_content() or "")
    thinking = page.locator("details.thinking")
    expect(thinking).to_have_count(1)
    expect(thinking).not_to_have_attribute("open", "")  # collapsed
    expect(thinking.locator("summary")).to_have_text("Thinking")
    assert thinking.locator(".thought").text_content() == "Pondering the question."
    assert "DUPLICATE" not in (transcript.text_content() or "")  # replayed seq numbers are dropped
    page.evaluate("f => window.consoleApp.handleFrame(f)", {"event": "history", "seq": 0, "messages": [
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "old **answer**"}]}]})
    expect(transcript.locator("strong")).to_have_text("answer")
    expect(transcript.locator(".msg.user")).to_have_text("old question")
    # Server tools (web, MCP) from a saved conversation are labelled as such, with their results.
    page.evaluate("f => window.consoleApp.handleFrame(f)", {"event": "history", "seq": 0, "messages": [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {"query": "bisect"}},
            {"type": "web_search_tool_result", "tool_use_id": "s1", "content": [{"type": "web_search_result", "url": "https://git-scm.com/docs/git-bisect", "title": "git-bisect"}]},
            {"type": "mcp_tool_use", "id": "m1", "name": "find_ticket", "server_name": "tickets", "input": {"id": 7}},
            {"type": "mcp_tool_result", "tool_use_id": "m1", "content": [{"type": "text", "text": "Ticket 7"}], "is_error": False}]}]})
    expect(transcript.locator("details.tool summary").nth(0)).to_have_text("Server tool · web_search: bisect· done")
    expect(transcript.locator("details.tool summary").nth(1)).to_have_text("MCP · tickets · find_ticket: id=7· done")
    expect(transcript.locator("details.tool .tool-result").nth(0)).to_contain_text("git-scm.com/docs/git-bisect", use_inner_text=False)
    expect(transcript.locator("details.tool .tool-result").nth(1)).to_contain_text("Ticket 7", use_inner_text=False)
    page.evaluate("f => window.consoleApp.handleFrame(f)", {"event": "cleared", "seq": 0, "conversationId": "c1"})
    expect(transcript).to_contain_text("History cleared.")
    rendered = page.evaluate("Object.keys(window.consoleApp.RENDER).sort()")
    assert rendered == sorted(["status", "stream", "message", "tool_use", "tool_result", "result", "error", "history", "cleared",
                               "permission_request", "permission_resolved"])


def test_a_retried_reply_drops_its_streamed_thinking_and_text(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    frames = [
        {"event": "status", "seq": 1, "status": "running", "turnId": "t1"},
        {"event": "stream", "seq": 2, "type": "thinking", "content": "Lost plan."},
        {"event": "stream", "seq": 3, "type": "text", "content": "Half"},
        {"event": "status", "seq": 4, "status": "retrying", "reason": "stream_cut", "discardStreamed": 4, "discardThinking": 10,
         "message": "The connection to the model dropped mid-reply."},
        {"event": "stream", "seq": 5, "type": "thinking", "content": "Kept plan."},
        {"event": "stream", "seq": 6, "type": "text", "content": "Whole answer."},
    ]
    for frame in frames:
        page.evaluate("f => window.consoleApp.handleFrame(f)", frame)
    transcript = page.locator("#transcript")
    thinking = transcript.locator("details.thinking")
    expect(thinking).to_have_count(1)
    assert thinking.locator(".thought").text_content() == "Kept plan."
    expect(transcript.locator(".msg.assistant")).to_have_count(1)
    expect(transcript.locator(".msg.assistant")).to_have_text("Whole answer.")
    # The thinking still comes before the text it led to.
    assert page.evaluate("[...document.querySelectorAll('#transcript details.thinking, #transcript .msg.assistant')]"
                         ".map(e => e.className)") == ["thinking", "msg assistant"]


def test_markdown_is_rendered_and_sanitised(world, page, context, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context.grant_permissions(["clipboard-read", "clipboard-write"])
    load_user(page, "md")
    start_session(page)
    world.fake.script(Reply([Text(HOSTILE_REPLY + "\n\n```\ncopy me\n```\n", chunks=6)]))
    page.fill("#prompt", "show me")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .result")).to_be_visible()
    reply = page.locator("#transcript .msg.assistant").last
    expect(reply.locator("h1")).to_have_text("Title")
    expect(reply).to_contain_text("Safe end.")
    assert reply.locator("script, img, [onerror], [onclick]").count() == 0
    assert reply.locator("#evil-link").get_attribute("href") is None  # javascript: URLs are dropped
    page.locator("#evil-p").click()
    page.locator("#evil-link").click()
    assert page.evaluate("window.__pwned") is None
    reply.get_by_role("button", name="Copy code").click()
    expect(reply.get_by_role("button", name="Copy code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "copy me\n"
    log.assert_clean()  # and the <img src="x"> was never requested


def test_transcript_follows_streaming_text(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1000, "height": 600})
    load_user(page, "scroller")
    start_session(page)
    lines = "".join(f"Line {i:02d} of a long answer.\n\n" for i in range(60))
    world.fake.script(Reply([Text(lines, chunks=60)], delay=0.03))
    page.fill("#prompt", "write a lot")
    page.keyboard.press("Enter")
    at_bottom = "() => { const t = document.getElementById('transcript'); return t.scrollHeight - t.scrollTop - t.clientHeight < 2; }"
    expect(page.locator("#transcript .msg.assistant")).to_contain_text("Line 20")
    assert page.evaluate("document.getElementById('transcript').scrollHeight > document.getElementById('transcript').clientHeight")
    assert page.evaluate(at_bottom)  # mid-stream, the newest text is in view
    expect(page.locator("#transcript .result")).to_be_visible()
    assert page.evaluate(at_bottom)
    # A reader who scrolled up is left where they are; a button offers the way back.
    page.evaluate("document.getElementById('transcript').scrollTop = 0")
    page.wait_for_function("() => document.getElementById('jump-latest').hidden === true")
    for seq in range(1000, 1030):
        page.evaluate("f => window.consoleApp.handleFrame(f)", {"event": "stream", "seq": seq, "type": "text", "content": f"more {seq}\n\n"})
    expect(page.locator("#jump-latest")).to_be_visible()
    assert page.evaluate("document.getElementById('transcript').scrollTop") == 0
    page.click("#jump-latest")
    page.wait_for_function(at_bottom)
    log.assert_clean()


def test_start_disabled_until_loaded_and_an_error_is_shown_once(world, page, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect(page.locator("#start-session")).to_be_disabled()
    expect(page.locator("#transcript .empty-chat")).to_contain_text("choose Load user")
    open_connection(page)
    page.fill("#user-id", "erin")
    expect(page.locator("#start-session")).to_be_disabled()  # typed, not loaded
    page.click("#connection button[type=submit]")
    expect(page.locator("#start-session")).to_be_enabled()
    expect(page.locator("#transcript .empty-chat")).to_contain_text("Start session")
    open_connection(page)
    page.fill("#user-id", "someone-else")
    expect(page.locator("#start-session")).to_be_disabled()
    load_user(page, "erin")
    start_session(page)
    load_user(page, "frank")  # another user: the session and its transcript were erin's
    expect(page.locator("#session-info")).to_have_text("No session.")
    expect(page.locator("#prompt")).to_be_disabled()
    expect(page.locator("#transcript")).not_to_contain_text("Ready: conversation")
    expect(page.locator("#transcript .empty-chat")).to_contain_text("frank")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    page.click("#start-session")
    expect(page.locator("#prompt")).to_be_enabled()
    page.fill("#prompt", "hello?")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .msg.user")).to_have_text("hello?")
    expect(page.locator(".error-card")).to_have_count(1)
    expect(page.locator(".error-card")).to_contain_text("ANTHROPIC_API_KEY")
    page.wait_for_timeout(300)  # any second copy would have arrived by now
    body = page.locator("body").inner_text()
    assert body.count("anthropic_api_key_missing") == 1, body
    expect(page.locator("#banner")).to_be_hidden()
    # The failed turn left nothing half-set: Interrupt off, Clear and Send on.
    expect(page.locator("#interrupt")).to_be_disabled()
    expect(page.locator("#clear")).to_be_enabled()
    expect(page.locator("#send")).to_be_enabled()
    shot(page, "error")
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}


def test_websocket_failures_name_their_cause(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "wsfail")
    start_session(page)
    # A refused upgrade (403: a stale token) while the server is up.
    page.evaluate("window.consoleApp.state.session.token = 'stale'; window.consoleApp.connect({action: 'start'})")
    expect(page.locator("#banner")).to_contain_text("refused the WebSocket (code 1006)")
    expect(page.locator("#banner")).to_contain_text("token")
    expect(page.locator("#turn-badge")).to_have_text("Disconnected")
    expect(page.locator("#send")).to_be_disabled()
    expect(page.locator("#interrupt")).to_be_disabled()
    # Nothing listening at all: /health does not answer either.
    dead = free_port()
    page.evaluate("""port => { const s = window.consoleApp.state; s.api = `http://127.0.0.1:${port}`;
        s.session.websocketUrl = `ws://127.0.0.1:${port}/ws?sessionId=x`; window.consoleApp.connect({action: 'start'}); }""", dead)
    expect(page.locator("#banner")).to_contain_text("The server is not running or not reachable")
    expect(page.locator("#banner")).to_contain_text("code 1006")
    expect(page.locator("#server-badge")).to_have_text("server unreachable")


def test_a_server_that_keeps_refusing_the_rejoin_is_named_not_retried_for_minutes(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "refused")
    start_session(page)
    # The session's token goes stale while connected (say, the server was redeployed with new keys).
    page.evaluate("window.consoleApp.state.session.token = 'stale'; window.consoleApp.state.ws.close()")
    expect(page.locator("#turn-badge")).to_contain_text("Reconnecting")
    expect(page.locator("#banner")).to_contain_text("refused the WebSocket", timeout=15000)
    expect(page.locator("#turn-badge")).to_have_text("Disconnected")
    expect(page.locator("#server-badge")).to_contain_text("development")  # the server itself answers


def test_empty_states_guide_and_a_sample_skill(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "newbie")
    open_panel(page, "Skills")
    expect(page.locator("#skills .empty")).to_contain_text("No skills yet")
    expect(page.locator("#conversations .empty")).to_contain_text("No conversations yet")
    expect(page.locator("#transcript .empty-chat")).to_contain_text("No skills yet: add one")
    shot(page, "empty")
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}
    page.get_by_role("button", name="Add a sample skill").click()
    expect(page.locator("#skills")).to_contain_text("debugging.md")
    expect(page.locator("#skill-status")).to_contain_text("Sample skill added")
    expect(page.locator("#skill-content")).to_have_value(re.compile("Bisect"))
    page.get_by_role("tab", name="Skills").click()  # the same tab again: back to the chat alone
    expect(page.locator("#skills-panel")).to_be_hidden()
    expect(page.locator("#transcript .empty-chat")).to_contain_text("1 skill will be copied")
    assert world.http.get("/users/newbie/skills").json()["count"] == 1
    log.assert_clean()


def test_delete_asks_for_confirmation(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    world.http.post("/users/del/skills", json={"name": "keep.md", "content": "# Keep"})
    load_user(page, "del")
    open_panel(page, "Skills")
    page.get_by_role("button", name="Open skill keep.md").click()
    expect(page.locator("#skill-name")).to_have_value("keep.md")
    page.click("#skill-delete")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm")).to_contain_text("keep.md")
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden()
    assert world.http.get("/users/del/skills/keep.md").status_code == 200
    page.click("#skill-delete")
    page.click("#confirm-ok")
    expect(page.locator("#skills .empty")).to_be_visible()
    assert world.http.get("/users/del/skills/keep.md").status_code == 404
    log.assert_clean()


def test_conversations_listed_with_first_prompt_a_page_at_a_time(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    for i in range(12):
        world.http.post("/users/hist/conversations", json={"conversationId": f"conv-{i:02d}", "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"Question number {i}"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "An answer."}]}]})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/conversations" in r.url else None)
    load_user(page, "hist")
    open_panel(page, "History")
    items = page.locator("#conversations .conv")
    expect(items).to_have_count(10)
    expect(items.first).to_contain_text("Question number 11")  # newest first
    expect(items.first).to_contain_text("2 messages")
    expect(items.first).to_contain_text(re.compile(r"\d+ bytes"))
    year = str(__import__("datetime").date.today().year)
    expect(items.first).to_contain_text(year)
    lists = [u for u in requests if re.search(r"/conversations\?", u)]
    details = [u for u in requests if re.search(r"/conversations/conv-", u)]
    assert len(lists) == 1 and len(details) == 10, requests  # the shown page only
    # After a turn the list is read again: only a conversation that changed is read in full.
    result = {"event": "result", "seq": 0, "turns": 1, "durationMs": 5, "costUsd": 0, "model": "m", "stopReason": "end_turn",
              "interrupted": False, "usage": {"inputTokens": 1, "outputTokens": 1, "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0}}
    requests.clear()
    page.evaluate("f => window.consoleApp.handleFrame(f)", result)
    page.wait_for_timeout(500)
    assert [u for u in requests if "/conversations/conv-" in u] == [] and len(requests) == 1, requests
    world.http.post("/users/hist/conversations", json={"conversationId": "conv-05", "messages": [
        {"role": "user", "content": "Question number 5, edited"}]})
    requests.clear()
    page.evaluate("f => window.consoleApp.handleFrame(f)", result)
    expect(items.first).to_contain_text("Question number 5, edited")  # now the newest
    assert [u for u in requests if "/conversations/conv-" in u] == [requests[-1]] and requests[-1].endswith("/conv-05"), requests
    page.click("#conversations-more")
    expect(items).to_have_count(12)
    expect(page.locator("#conversations-more")).to_be_hidden()
    expect(items.last).to_contain_text("Question number 0")
    # Delete asks first, then the list shrinks.
    items.first.get_by_role("button", name="Delete conversation conv-05").click()
    expect(page.locator("#confirm")).to_contain_text("Question number 5, edited")
    page.click("#confirm-ok")
    expect(page.locator("#conversations")).not_to_contain_text("Question number 5")
    assert world.http.get("/users/hist/conversations/conv-05").status_code == 404
    log.assert_clean()


def test_phone_width_chat_first(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    load_user(page, "phone")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#chat-panel")).to_be_visible()
    expect(page.locator("#skills-panel")).to_be_hidden()
    expect(page.locator("#connection")).to_be_hidden()  # folded away once the user is loaded
    for control in ("#prompt", "#start-session"):
        box = page.locator(control).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 391 and box["y"] < 844, control
    start_session(page)
    expect(page.locator("#transcript .empty-chat")).to_contain_text("Ask anything.")
    shot(page, "phone")
    page.get_by_role("tab", name="Skills").click()
    expect(page.locator("#skills-panel")).to_be_visible()
    expect(page.locator("#chat-panel")).to_be_hidden()
    box = page.locator("#skill-name").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 391
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Settings")).to_be_focused()
    expect(page.locator("#settings-panel")).to_be_visible()
    page.get_by_text("Connection · phone").click()
    expect(page.locator("#user-id")).to_be_visible()
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}
    page.keyboard.press("Escape")  # folds the connection form away...
    expect(page.locator("#user-id")).to_be_hidden()
    page.keyboard.press("Escape")  # ...then closes the panel
    expect(page.locator("#chat-panel")).to_be_visible()
    page.get_by_text("Connection · phone").click()
    page.locator("#transcript").click()  # a click elsewhere folds it too
    expect(page.locator("#user-id")).to_be_hidden()
    log.assert_clean()


def test_api_key_stays_in_the_tab_unless_remembered(world, page) -> None:  # type: ignore[no-untyped-def]
    page.fill("#api-key", "k-123")
    load_user(page, "keys")
    open_connection(page)
    stored = "() => [sessionStorage.getItem('console.key'), localStorage.getItem('console.key')]"
    assert page.evaluate(stored) == ["k-123", None]
    page.check("#remember-key")
    assert page.evaluate(stored) == [None, "k-123"]
    page.reload()
    assert page.input_value("#api-key") == "k-123"
    # The remembered user loads by itself after a reload, and folds the form away when it has.
    page.wait_for_function("window.consoleApp.state.loadedUser === 'keys'")
    open_connection(page)
    page.uncheck("#remember-key")
    assert page.evaluate(stored) == ["k-123", None]


def test_user_field_validates_in_the_browser(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    pattern = page.get_attribute("#user-id", "pattern")
    assert page.evaluate("p => { new RegExp(`^(?:${p})$`, 'v'); return true; }", pattern)  # valid under the v flag
    page.fill("#user-id", "not a valid id!")
    assert page.evaluate("document.getElementById('user-id').validity.patternMismatch")
    page.click("#connection button[type=submit]")
    assert page.evaluate("window.consoleApp.state.loadedUser") is None
    page.fill("#user-id", "ok-user_1.x")
    assert not page.evaluate("document.getElementById('user-id').validity.patternMismatch")
    log.assert_clean()


def test_offline_model_badge(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect(page.locator("#server-badge")).to_contain_text("development")
    expect(page.locator("#offline-badge")).to_be_hidden()  # the field absent: Claude
    # ./scripts/dev --offline-model adds "offlineModel": true to /health; answer the same here.
    health = world.http.get("/health").json()

    def offline(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps({**health, "offlineModel": True}))

    page.route("**/health", offline)
    page.reload()
    expect(page.locator("#offline-badge")).to_have_text("Offline stand-in - not Claude")
    expect(page.locator("#offline-badge")).to_be_visible()
    log.assert_clean()


def test_reconnect_resumes_without_losing_or_repeating_text(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "flaky")
    start_session(page)
    answer = "".join(f"part{i:02d} " for i in range(40))
    world.fake.script(Reply([Text(answer, chunks=40)], delay=0.05))
    page.fill("#prompt", "stream slowly")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .msg.assistant")).to_contain_text("part03")
    page.evaluate("window.consoleApp.state.ws.close()")  # the network drops mid-answer
    expect(page.locator("#turn-badge")).to_contain_text("Reconnecting")
    expect(page.locator("#transcript .result")).to_contain_text("1 turn ·", timeout=30000)
    streamed = page.locator("#transcript .msg.assistant").all_text_contents()
    assert "".join(streamed).strip() == answer.strip()


@pytest.mark.parametrize("lost", ["frame", "answer"])
def test_a_message_whose_answer_was_lost_is_resent_and_runs_once(world, page, lost: str) -> None:  # type: ignore[no-untyped-def]
    """The connection drops as a message is sent, before its `queued` answer: with the frame
    (it never reached the server) or after it (only the answer is lost). The console reconnects,
    resumes and resends the message with the same messageId: it runs, and once."""
    from playwright.sync_api import expect

    load_user(page, "resend")
    start_session(page)
    world.fake.script(Reply([Text("Answered once.")]), Reply([Text("Answered TWICE.")]))
    page.evaluate("""(lost) => {
      const send = WebSocket.prototype.send;
      WebSocket.prototype.send = function (data) {
        const first = JSON.parse(data).action === "message" && !window.__dropped;
        if (!first || lost === "answer") send.call(this, data);
        if (first) { window.__dropped = true; this.close(); }
      };
    }""", lost)
    page.fill("#prompt", "only once please")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .result")).to_contain_text("1 turn ·", timeout=30000)
    expect(page.locator("#transcript")).to_contain_text("Answered once.")
    assert page.evaluate("window.__dropped") is True
    assert page.evaluate("window.consoleApp.state.unacked") is None
    assert len(world.fake.requests) == 1
    assert "TWICE" not in (page.locator("#transcript").text_content() or "")


# Every form control's accessible name, and the WCAG contrast of every piece of visible text.
A11Y_AUDIT = """() => {
  const visible = (el) => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const nameOf = (el) => {
    if (el.getAttribute('aria-label')) return el.getAttribute('aria-label');
    const by = el.getAttribute('aria-labelledby');
    if (by) return by.split(' ').map(id => (document.getElementById(id) || {}).textContent || '').join(' ').trim();
    if (el.labels && el.labels.length) return [...el.labels].map(l => l.textContent).join(' ').trim();
    if (el.tagName === 'BUTTON') return (el.textContent || el.title || '').trim();
    return (el.title || '').trim();
  };
  const unnamed = [...document.querySelectorAll('input, select, textarea, button')]
    .filter(el => el.type !== 'hidden' && visible(el) && !nameOf(el)).map(el => el.outerHTML.slice(0, 80));
  const rgb = (c) => { const m = c.match(/[\\d.]+/g).map(Number); return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
  const lum = ({r, g, b}) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (el) => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.a > 0.5) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    const text = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    if (!text || !visible(el)) continue;
    const s = getComputedStyle(el); const fg = lum(rgb(s.color)); const bg = lum(background(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(s.fontSize); const large = size >= 24 || (size >= 18.66 && parseInt(s.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) low.push(`${el.tagName}.${el.className} "${text.slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return {unnamed, low};
}"""


def test_controls_are_labelled_and_text_has_contrast_in_both_themes(world, page) -> None:  # type: ignore[no-untyped-def]
    world.http.post("/users/ada/skills", json={"name": "debugging.md", "content": SKILL})
    load_user(page, "ada")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for panel in ("Skills", "Settings", "Files", "History"):
            open_panel(page, panel)
            page.wait_for_selector("text=debugging.md") if panel == "Skills" else None
            assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}, (scheme, panel)
        open_connection(page)
        assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}, (scheme, "connection")
    # The audit itself catches what it should.
    page.emulate_media(color_scheme="light")
    page.evaluate("""document.body.insertAdjacentHTML('beforeend',
        '<p style="color:#bbb;background:#fff">faint text</p><input id="unlabelled-probe">')""")
    audit = page.evaluate(A11Y_AUDIT)
    assert len(audit["unnamed"]) == 1 and "unlabelled-probe" in audit["unnamed"][0]
    assert [line for line in audit["low"] if "faint text" in line]


def test_permission_prompts_are_approved_and_denied_in_the_console(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "asker")
    open_panel(page, "Settings")
    # The settings panel sets "Ask me" for bash and a budget.
    page.select_option("#set-perm-bash", "ask")
    page.fill("#set-budget", "2.5")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#settings-status")).to_have_text("Saved ✓")
    page.get_by_role("button", name="Close Settings").click()
    stored = world.http.get("/users/asker/settings").json()["settings"]
    assert stored["permissions"] == {"bash": "ask", "str_replace_based_edit_tool": "allow"} and stored["maxBudgetUsd"] == 2.5
    start_session(page)
    world.fake.script(Reply([ToolUse("bash", {"command": "echo approved-in-browser"})]), Reply([ToolUse("bash", {"command": "echo denied-in-browser"})]),
                      Reply([ToolUse("bash", {"command": "echo denied-again"})]), Reply([Text("All answered.")]))
    page.fill("#prompt", "run things")
    page.click("#send")
    first = page.locator(".permission").nth(0)
    expect(first).to_contain_text("The agent wants to run bash")
    expect(first.locator(".tool-input")).to_contain_text("echo approved-in-browser")
    # The agent is not working: it waits for the user, and the badge says so.
    expect(page.locator("#turn-badge")).to_have_text("Waiting for your approval")
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}
    first.get_by_role("button", name="Approve").click()
    expect(first.locator(".outcome")).to_have_text("Approved")
    expect(first.get_by_role("button", name="Deny")).to_be_disabled()
    # An answered card keeps its buttons for the record, flat: no filled, active-looking Approve.
    approve = first.get_by_role("button", name="Approve")
    expect(approve).to_be_disabled()
    assert approve.evaluate("b => getComputedStyle(b).backgroundColor") == "rgba(0, 0, 0, 0)"
    expect(first.locator("input.remember")).to_be_hidden()
    second = page.locator(".permission").nth(1)
    expect(second.locator(".tool-input")).to_contain_text("echo denied-in-browser")
    second.locator("input.remember").check()
    second.get_by_role("button", name="Deny").click()
    expect(second.locator(".outcome")).to_have_text("Denied")
    expect(page.locator("#transcript .result")).to_contain_text("4 turns")
    # The third call was denied by the remembered answer, without a card.
    expect(page.locator(".permission")).to_have_count(2)
    results = [world.fake.requests[i]["messages"][-1]["content"][0] for i in (1, 2, 3)]
    assert results[0]["content"].strip() == "approved-in-browser" and not results[0].get("is_error")
    assert results[1]["is_error"] and "The user declined this bash call" in results[1]["content"]
    assert results[2]["is_error"] and "The user declined this bash call" in results[2]["content"]
    shot(page, "permission")
    log.assert_clean()


TRANSCRIPT_SHARE = """() => {
  const t = document.getElementById('transcript').getBoundingClientRect();
  return t.height / window.innerHeight;
}"""
PROMPT_HEIGHT = "() => document.getElementById('prompt').getBoundingClientRect().height"
LINE_HEIGHT = "() => parseFloat(getComputedStyle(document.getElementById('prompt')).lineHeight)"


@pytest.mark.parametrize(("width", "height", "share"), [(1280, 800, 0.60), (390, 844, 0.55)])
def test_the_conversation_gets_the_space(world, page, log: BrowserLog, width: int, height: int, share: float) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.set_viewport_size({"width": width, "height": height})
    world.http.post("/users/roomy/skills", json={"name": "debugging.md", "content": SKILL})
    load_user(page, "roomy")
    start_session(page)
    world.fake.script(Reply([Text("Let me look."), ToolUse("bash", {"command": "ls -R /workspace/.claude/skills"})]),
                      Reply([Text(MARKDOWN_REPLY)]))
    page.fill("#prompt", "How do I debug?")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .result")).to_contain_text("2 turns")
    # During a conversation the transcript has the share of the window the issue asks for.
    measured = page.evaluate(TRANSCRIPT_SHARE)
    assert measured >= share, f"the transcript gets {measured:.0%} of {width}x{height}"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    # The composer starts at one line and grows with what is typed.
    line = page.evaluate(LINE_HEIGHT)
    one_line = page.evaluate(PROMPT_HEIGHT)
    assert one_line < 2 * line, (one_line, line)
    page.fill("#prompt", "first\nsecond\nthird\nfourth")
    assert page.evaluate(PROMPT_HEIGHT) >= 3.5 * line
    page.fill("#prompt", "")
    assert page.evaluate(PROMPT_HEIGHT) < 2 * line
    # Skills, settings, files and history are not on screen, and each is one click away.
    for panel in ("Skills", "Settings", "Files", "History"):
        expect(page.locator(f"#{panel.lower()}-panel")).to_be_hidden()
    for panel in ("Skills", "Settings", "Files", "History"):
        page.get_by_role("tab", name=panel).click()
        expect(page.locator(f"#{panel.lower()}-panel")).to_be_visible()
    page.get_by_role("button", name="Close History").click()
    expect(page.locator("#history-panel")).to_be_hidden()
    expect(page.locator("#transcript")).to_be_visible()
    assert page.evaluate(TRANSCRIPT_SHARE) >= share
    shot(page, f"layout-{width}")
    log.assert_clean()


def test_a_saved_conversation_is_visibly_read_only(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    world.http.post("/users/reader/conversations", json={"conversationId": "conv-old", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "An old question"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "An old **answer**."}]}]})
    load_user(page, "reader")
    start_session(page)
    expect(page.locator("#turn-badge")).to_have_text("Connected")
    open_panel(page, "History")
    page.get_by_role("button", name="Open conversation “An old question” read-only").click()
    # The composer gives way to "Continue in a new session"; nothing says Connected, nothing can be sent.
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#read-only")).to_contain_text("Read-only")
    expect(page.locator("#chat-form")).to_be_hidden()
    expect(page.locator("#prompt")).to_be_hidden()
    expect(page.locator("#clear")).to_be_hidden()
    expect(page.locator("#turn-badge")).to_have_text("Read-only")
    expect(page.locator("#saved-transcript strong")).to_have_text("answer")
    expect(page.locator("#transcript")).to_be_hidden()
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}
    shot(page, "read-only")
    # Back to the live session: its transcript is as it was.
    page.get_by_role("button", name="Back to the live session").click()
    expect(page.locator("#prompt")).to_be_enabled()
    expect(page.locator("#turn-badge")).to_have_text("Connected")
    expect(page.locator("#transcript")).to_contain_text("Ready: conversation")
    expect(page.locator("#transcript")).not_to_contain_text("An old question")
    # Continue in a new session: the saved conversation is carried on, live.
    open_panel(page, "History")
    page.get_by_role("button", name="Open conversation “An old question” read-only").click()
    page.get_by_role("button", name="Continue in a new session").click()
    expect(page.locator("#transcript")).to_contain_text("Ready: conversation conv-old (2 earlier messages)")
    expect(page.locator("#read-only")).to_be_hidden()
    expect(page.locator("#prompt")).to_be_enabled()
    log.assert_clean()


def test_a_dead_address_leaves_no_stale_promise(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    world.http.post("/users/stale/skills", json={"name": "debugging.md", "content": SKILL})
    load_user(page, "stale")
    expect(page.locator("#transcript .empty-chat")).to_contain_text("1 skill will be copied")
    open_connection(page)
    page.fill("#api-base", f"http://127.0.0.1:{free_port()}")
    page.click("#connection button[type=submit]")
    expect(page.locator("#banner")).to_contain_text("Cannot reach")
    empty = page.locator("#transcript .empty-chat")
    expect(empty).to_contain_text("Could not load stale.")
    expect(empty).not_to_contain_text("Ready when you are")
    expect(empty).not_to_contain_text("will be copied")
    expect(page.locator("#start-session")).to_be_disabled()
    expect(page.locator("#user-id")).to_be_visible()  # the connection form stays open to fix it
    open_panel(page, "Skills")
    expect(page.locator("#skills")).not_to_contain_text("debugging.md")  # not the skills of a server it cannot reach


def test_tool_calls_read_on_one_line_and_code_is_highlighted(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    def frame(f: dict[str, Any]) -> None:
        page.evaluate("f => window.consoleApp.handleFrame(f)", f)

    frame({"event": "status", "seq": 1, "status": "running", "turnId": "t1"})
    frame({"event": "tool_use", "seq": 2, "id": "b1", "name": "bash", "input": {"command": "ls -R\n  /workspace/.claude/skills"}})
    tools = page.locator("#transcript details.tool")
    first = tools.nth(0)
    # Running: the command on one line, and a spinner.
    expect(first.locator("summary")).to_contain_text("bash: ls -R /workspace/.claude/skills")
    expect(first.locator(".spinner")).to_be_visible()
    frame({"event": "tool_result", "seq": 3, "tool_use_id": "b1", "content": "/workspace/.claude/skills:\nnotes.md", "is_error": False})
    expect(first.locator(".spinner")).to_have_count(0)
    expect(first.locator("summary")).to_have_text(re.compile(r"^▸?bash: ls -R /workspace/\.claude/skills\s*· exit 0 · \d+\.\d s$"))
    frame({"event": "tool_use", "seq": 4, "id": "e1", "name": "str_replace_based_edit_tool",
           "input": {"command": "create", "path": "/workspace/notes/plan.md", "file_text": "# Plan"}})
    expect(tools.nth(1).locator(".tool-line")).to_have_text("edit: create notes/plan.md")
    frame({"event": "tool_result", "seq": 5, "tool_use_id": "e1", "content": "Created /workspace/notes/plan.md", "is_error": False})
    frame({"event": "tool_use", "seq": 6, "id": "b2", "name": "bash", "input": {"command": "make test"}})
    frame({"event": "tool_result", "seq": 7, "tool_use_id": "b2", "content": "2 failed\n[exit code 2]", "is_error": False})
    failed = tools.nth(2)
    expect(failed).to_have_class(re.compile(r"\bfailed\b"))
    expect(failed.locator(".tool-status")).to_contain_text("exit 2")
    frame({"event": "tool_use", "seq": 8, "id": "b3", "name": "bash", "input": {"command": "sleep 999"}})
    frame({"event": "tool_result", "seq": 9, "tool_use_id": "b3", "content": "The command timed out after 60 s", "is_error": True})
    expect(tools.nth(3)).to_have_class(re.compile(r"\bfailed\b"))
    expect(tools.nth(3).locator(".tool-status")).to_contain_text("timed out")
    # Opened, a call shows its input and its output.
    expect(first.locator(".tool-input")).to_be_hidden()
    first.locator("summary").click()
    expect(first.locator(".tool-input")).to_be_visible()
    expect(first.locator(".tool-result")).to_contain_text("notes.md")
    # A call the turn ends without answering stops spinning.
    frame({"event": "tool_use", "seq": 10, "id": "b4", "name": "bash", "input": {"command": "sleep 5"}})
    frame({"event": "stream", "seq": 11, "type": "text", "content": "```python\ndef plan():\n    return 'bisect'  # then fix\n```\n"})
    frame({"event": "result", "seq": 12, "turns": 1, "durationMs": 12, "usage": {"inputTokens": 5, "outputTokens": 6,
           "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0}, "costUsd": 0.0001, "model": "claude-sonnet-4-6",
           "stopReason": "end_turn", "interrupted": False})
    expect(page.locator("#transcript .spinner")).to_have_count(0)
    expect(tools.nth(4).locator(".tool-status")).to_have_text("· not finished")
    # Code is highlighted by the vendored highlight.js, in colours that pass the contrast audit.
    code = page.locator("#transcript pre code.hljs")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(code.locator(".hljs-string")).to_have_text("'bisect'")
    expect(code.locator(".hljs-comment")).to_have_text("# then fix")
    # The turn names the model that answered, above its first step.
    expect(page.locator("#transcript .model-tag")).to_have_text(["claude-sonnet-4-6"])
    assert page.evaluate("document.querySelector('#transcript .model-tag').nextElementSibling === "
                         "document.querySelector('#transcript details.tool')")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}, scheme
    log.assert_clean()


def test_phone_tables_keep_words_whole(world, page) -> None:  # type: ignore[no-untyped-def]
    page.set_viewport_size({"width": 390, "height": 844})
    table = "| Step | Build | Deploy to production | Verify the rollout |\n|---|---|---|---|\n" + \
            "| one | two | three four five six | seven eight nine ten |\n"
    page.evaluate("f => window.consoleApp.handleFrame(f)", {"event": "stream", "seq": 1, "type": "text", "content": table})
    page.wait_for_selector("#transcript table th")
    # Every header cell is as wide as its longest word: nothing like "Ste p" or "Buil d".
    broken = page.evaluate("""() => [...document.querySelectorAll('#transcript th, #transcript td')].filter(c => {
        const range = document.createRange(); range.selectNodeContents(c);
        const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        return c.tagName === 'TH' ? lines.size > 1 : c.scrollWidth > c.clientWidth + 1; }).map(c => c.textContent)""")
    assert broken == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_a_prompt_sent_as_the_session_opens_comes_after_its_start(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "eager")
    world.fake.script(Reply([Text("Hello, eager.")]))
    # The frame the server answers `start` with arrives after a prompt sent the moment the socket opened.
    page.evaluate("""() => { const app = window.consoleApp; const original = app.RENDER.status;
        app.RENDER.status = (f) => f.status === 'ready' ? setTimeout(() => original(f), 300) : original(f); }""")
    page.click("#start-session")
    expect(page.locator("#prompt")).to_be_enabled()
    page.fill("#prompt", "right away")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .result")).to_be_visible()
    expect(page.locator("#transcript .note").first).to_contain_text("Ready: conversation")
    assert page.evaluate("document.querySelector('#transcript').firstElementChild.textContent").startswith("Ready: conversation")
    log.assert_clean()
