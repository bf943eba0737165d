"""The web console in a real Chromium (Debian's), against the local gateway and the fake model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.fakes.fake_anthropic import Endless, Reply, Text, ToolUse
from tests.support.api import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]
SCREENSHOT = ROOT / "docs" / "console.png"
SKILL = "# Debugging Skill\n\nRead the logs first, then bisect the change."


@pytest.fixture
def page(world) -> Iterator:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20000)
        page.goto(world.url + "/")
        yield page
        context.close()
        browser.close()


def load_user(page, user: str) -> None:  # type: ignore[no-untyped-def]
    page.fill("#user-id", user)
    page.click("#connection button[type=submit]")


def test_skill_session_chat_interrupt_reload_screenshot(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "webuser")
    # 1-2. create a skill and see it listed
    page.fill("#skill-name", "debugging.md")
    page.fill("#skill-content", SKILL)
    page.click("#skill-form button[type=submit]")
    expect(page.locator("#skills")).to_contain_text("debugging.md")
    # A SKILL.md breaking the rules shows the API's error next to the editor.
    page.fill("#skill-name", "pdf-tools")
    page.fill("#skill-content", "---\nname: PDF\ndescription: x\n---\n")
    page.click("#skill-form button[type=submit]")
    expect(page.locator("#skill-error")).to_contain_text("invalid_frontmatter")
    # 3. start a session
    page.click("#start-session")
    expect(page.locator("#session-info")).to_contain_text("r2_load_dev")
    expect(page.locator("#skills-loaded")).to_contain_text("/workspace/.claude/skills/debugging.md")
    expect(page.locator("#transcript")).to_contain_text("Ready")
    # 4-5. a prompt; the answer streams and a tool call reads the skill
    world.fake.script(
        Reply([Text("Let me read your skill."), ToolUse("str_replace_based_edit_tool", {"command": "view", "path": "/workspace/.claude/skills/debugging.md"})]),
        Reply([Text("Your skill says: read the logs first, then bisect.", chunks=10)], delay=0.02),
    )
    page.fill("#prompt", "How do I debug?")
    page.click("#send")
    expect(page.locator("#transcript .result")).to_contain_text("2 turns")
    expect(page.locator("#transcript")).to_contain_text("Your skill says: read the logs first, then bisect.")
    tool = page.locator("details.tool").first
    expect(tool.locator("summary")).to_contain_text("str_replace_based_edit_tool")
    tool.locator("summary").click()
    expect(tool.locator(".tool-result")).to_contain_text("Read the logs first")
    page.screenshot(path=str(SCREENSHOT), full_page=False)
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}  # mid-conversation, tool call open
    # 6. interrupt a long answer
    world.fake.script(Endless(delta="more ", delay=0.01, max_deltas=20000))
    page.fill("#prompt", "Talk for a long time")
    page.keyboard.press("Enter")
    expect(page.locator("#interrupt")).to_be_enabled()
    expect(page.locator("#transcript")).to_contain_text("more more more")
    page.click("#interrupt")
    expect(page.locator("#transcript .result").last).to_contain_text("interrupted")
    # 7. reload and reopen the conversation read-only
    page.reload()
    conversation = page.get_by_role("button", name="Open conversation", exact=False).first
    conversation.click()
    expect(page.locator("#transcript")).to_contain_text("read-only")
    expect(page.locator("#transcript")).to_contain_text("Your skill says: read the logs first, then bisect.")
    assert SCREENSHOT.stat().st_size > 10_000


def test_keyboard_only_chat(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    world.fake.script(Reply([Text("Hello from the keyboard test.")]))
    page.focus("#user-id")
    page.keyboard.type("keys")
    page.keyboard.press("Enter")  # submits the connection form
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
    expect(page.locator("#transcript .result")).to_contain_text("1 turns")
    expect(page.locator("#transcript")).to_contain_text("Hello from the keyboard test.")


def test_every_server_event_is_rendered(world, page) -> None:  # type: ignore[no-untyped-def]
    frames = [
        {"event": "status", "seq": 0, "status": "ready", "conversationId": "c1", "continued": False, "messageCount": 0},
        {"event": "status", "seq": 1, "status": "running", "turnId": "t1"},
        {"event": "message", "seq": 2, "role": "user", "content": "hi", "uuid": "u1"},
        {"event": "stream", "seq": 3, "type": "text", "content": "Streamed "},
        {"event": "stream", "seq": 4, "type": "text", "content": "text."},
        {"event": "message", "seq": 5, "role": "assistant", "content": [{"type": "text", "text": "Streamed text."}], "uuid": "a1"},
        {"event": "tool_use", "seq": 6, "id": "tu1", "name": "bash", "input": {"command": "ls"}},
        {"event": "tool_result", "seq": 7, "tool_use_id": "tu1", "content": "file.txt", "is_error": False},
        {"event": "status", "seq": 8, "status": "max_turns_reached", "message": "Stopped after 1 model replies"},
        {"event": "result", "seq": 9, "turns": 1, "durationMs": 12, "usage": {"inputTokens": 5, "outputTokens": 6,
         "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0}, "costUsd": 0.0001, "model": "m", "stopReason": "max_turns", "interrupted": False},
        {"event": "stream", "seq": 9, "type": "text", "content": "DUPLICATE"},
        {"event": "error", "seq": 0, "code": "invalid_frame", "message": "Bad frame."},
    ]
    for frame in frames:
        page.evaluate("f => window.consoleApp.handleFrame(f)", frame)
    text = page.locator("#transcript").text_content() or ""
    for needle in ("Ready: conversation c1", "Streamed text.", "bash", "file.txt", "max_turns_reached", "1 turns",
                   "$0.0001", "Error (invalid_frame): Bad frame."):
        assert needle in text, needle
    assert "DUPLICATE" not in text  # replayed seq numbers are dropped
    page.evaluate("f => window.consoleApp.handleFrame(f)", {"event": "history", "seq": 0, "messages": [
        {"role": "user", "content": "old question"}, {"role": "assistant", "content": [{"type": "text", "text": "old answer"}]}]})
    assert "old answer" in page.locator("#transcript").inner_text()
    page.evaluate("f => window.consoleApp.handleFrame(f)", {"event": "cleared", "seq": 0, "conversationId": "c1"})
    assert "History cleared." in page.locator("#transcript").inner_text()
    rendered = page.evaluate("Object.keys(window.consoleApp.RENDER).sort()")
    assert rendered == sorted(["status", "stream", "message", "tool_use", "tool_result", "result", "error", "history", "cleared"])


def test_errors_are_visible(world, page, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    monkeypatch.setenv("API_KEY", "secret")
    load_user(page, "alice")
    expect(page.locator("#banner")).to_contain_text("Enter the API key")
    page.fill("#api-key", "secret")
    page.click("#connection button[type=submit]")
    expect(page.locator("#banner")).to_be_hidden()
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    page.click("#start-session")
    expect(page.locator("#banner")).to_contain_text("ANTHROPIC_API_KEY")


def test_phone_width_layout(world, page) -> None:  # type: ignore[no-untyped-def]
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    for control in ("#user-id", "#skill-name", "#prompt", "#start-session"):
        box = page.locator(control).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 391


def test_reconnect_resumes_without_losing_or_repeating_text(world, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    load_user(page, "flaky")
    page.click("#start-session")
    expect(page.locator("#transcript")).to_contain_text("Ready")
    answer = "".join(f"part{i:02d} " for i in range(40))
    world.fake.script(Reply([Text(answer, chunks=40)], delay=0.05))
    page.fill("#prompt", "stream slowly")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .msg.assistant")).to_contain_text("part03")
    page.evaluate("window.consoleApp.state.ws.close()")  # the network drops mid-answer
    expect(page.locator("#transcript")).to_contain_text("reconnecting")
    expect(page.locator("#transcript .result")).to_contain_text("1 turns", timeout=30000)
    streamed = page.locator("#transcript .msg.assistant").all_text_contents()
    assert "".join(streamed) == answer


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


def test_controls_are_labelled_and_text_has_contrast(world, page) -> None:  # type: ignore[no-untyped-def]
    world.http.post("/users/ada/skills", json={"name": "debugging.md", "content": SKILL})
    load_user(page, "ada")
    page.wait_for_selector("text=debugging.md")
    assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}
    # The audit itself catches what it should.
    page.evaluate("""document.body.insertAdjacentHTML('beforeend',
        '<p style="color:#bbb;background:#fff">faint text</p><input id="unlabelled-probe">')""")
    audit = page.evaluate(A11Y_AUDIT)
    assert len(audit["unnamed"]) == 1 and "unlabelled-probe" in audit["unnamed"][0]
    assert [line for line in audit["low"] if "faint text" in line]
