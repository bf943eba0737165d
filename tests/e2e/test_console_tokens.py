"""The console signed in with an end user's token (issue 23, Clients), in a real Chromium: the
token from an app's link (#token=) or pasted, the user taken from it, REST and the websocket
as that user, the usage and limits one click away, quota refusals said clearly, and a token of
another user refused (fixtures shared with test_console_browser)."""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_console_browser import (  # noqa: F401 - pytest fixtures
    A11Y_AUDIT,
    BrowserLog,
    context,
    log,
    open_connection,
    open_panel,
    page,
    pytestmark,
    shot,
    start_session,
)
from tests.fakes.fake_anthropic import Reply, Text

SECRET = "user-token-secret-for-tests-0123456789"
OPERATOR = {"Authorization": "Bearer operator-key"}
STORED = "() => [sessionStorage.getItem('console.key'), localStorage.getItem('console.key')]"


@pytest.fixture
def tenants(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A server with an operator key that mints user tokens."""
    monkeypatch.setenv("API_KEY", "operator-key")
    monkeypatch.setenv("USER_TOKEN_SECRET", SECRET)


def mint(world, user: str) -> str:  # type: ignore[no-untyped-def]
    answer = world.http.post(f"/users/{user}/tokens", headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def test_a_token_from_the_apps_link_chats_as_its_user_and_sees_the_usage(world, tenants, page, log: BrowserLog,  # type: ignore[no-untyped-def]  # noqa: F811
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect

    monkeypatch.setenv("USER_DAILY_BUDGET_USD", "2")
    monkeypatch.setenv("USER_MESSAGES_PER_MINUTE", "30")
    assert world.http.put("/users/tia/limits", json={"maxSessions": 2}, headers=OPERATOR).status_code == 200
    token = mint(world, "tia")
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{world.url}/#token={token}")
    page.wait_for_function("window.consoleApp.state.loadedUser === 'tia'")
    # The fragment is gone from the address (and history); the token is kept in this tab only.
    assert page.evaluate("window.location.hash") == "" and token not in page.url
    assert page.evaluate(STORED) == [token, None]
    expect(page.locator("#connection-summary")).to_have_text("Connection · tia · token")
    open_connection(page)
    expect(page.locator("#user-id")).to_have_value("tia")
    assert page.evaluate("document.getElementById('user-id').readOnly") is True
    expect(page.locator("#user-hint")).to_be_visible()
    shot(page, "token-connection")
    # Usage and limits: one click away, in Settings.
    open_panel(page, "Settings")
    usage = page.locator("#usage-list")
    expect(page.locator("#usage-info")).to_contain_text("Signed in as tia with a user token")
    expect(usage).to_contain_text("$0.00 of $2.00 · $2.00 left")
    expect(usage).to_contain_text("0 · at most 30 a minute")
    expect(usage).to_contain_text("at most 2 live sessions at once")
    expect(usage).to_contain_text("Set for this user by the operator: sessions at once")
    start_session(page)
    world.fake.script(Reply([Text("Hello, Tia.")]))
    page.fill("#prompt", "hello")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .result")).to_contain_text("1 turn ·")
    expect(usage).to_contain_text("1 · at most 30 a minute")  # refreshed after the turn, panel open
    expect(usage).to_contain_text(" in · 20 out")
    shot(page, "usage")
    # The websocket carried the user token, not the operator's key nor the /setup token.
    assert sockets and all("access_token=" in url and "&token=" not in url for url in sockets), sockets
    saved = world.http.get("/users/tia/conversations", headers=OPERATOR).json()["conversations"]
    assert [c["conversationId"] for c in saved] == [page.evaluate("window.consoleApp.state.session.sessionId")]
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}, (scheme, "usage")
        open_connection(page)
        assert page.evaluate(A11Y_AUDIT) == {"unnamed": [], "low": []}, (scheme, "connection with a token")
        page.keyboard.press("Escape")
    log.assert_clean()


def test_a_token_of_another_user_is_refused_saying_whose_it_is(world, tenants, page) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    world.http.post("/users/tia/skills", json={"name": "private.md", "content": "# Tia's"}, headers=OPERATOR)
    refused: list[str] = []
    page.on("response", lambda r: refused.append(r.url) if r.status == 403 else None)
    page.goto(f"{world.url}/#user=tia&token={mint(world, 'bob')}")
    expect(page.locator("#banner")).to_contain_text("This token signs in as bob, not tia: it cannot open tia's data.")
    expect(page.locator("#banner")).to_contain_text("A user token opens only its own user's data and sessions.")
    assert refused and all("/users/tia/" in url for url in refused)  # the server said no, not only the page
    assert page.evaluate("window.consoleApp.state.loadedUser") is None
    expect(page.locator("#start-session")).to_be_disabled()
    expect(page.locator("#transcript .empty-chat")).to_contain_text("Could not load tia.")
    open_panel(page, "Skills")
    expect(page.locator("#skills")).not_to_contain_text("private.md")
    # Load user again: the token's own user.
    open_connection(page)
    expect(page.locator("#user-id")).to_have_value("bob")
    page.click("#load-user")
    page.wait_for_function("window.consoleApp.state.loadedUser === 'bob'")


def test_a_pasted_token_names_its_user_and_a_bad_one_says_why(world, tenants, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    token = mint(world, "pia")
    open_connection(page)
    page.fill("#user-id", "someone-else")
    page.fill("#api-key", token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    assert page.evaluate("document.getElementById('user-id').readOnly") is True
    expect(page.locator("#user-id")).to_have_value("")
    expect(page.locator("#user-id")).to_have_attribute("placeholder", "from the token")
    page.click("#load-user")
    expect(page.locator("#banner")).to_contain_text("The user token was refused")
    expect(page.locator("#banner")).to_contain_text("get a new one from your app")
    page.fill("#api-key", token)
    page.click("#load-user")
    page.wait_for_function("window.consoleApp.state.loadedUser === 'pia'")
    expect(page.locator("#banner")).to_be_hidden()
    page.reload()  # kept in the tab: the token signs in again by itself
    page.wait_for_function("window.consoleApp.state.loadedUser === 'pia'")
    # Back to the operator's key: the user field is the user's to choose again.
    open_connection(page)
    page.fill("#api-key", "operator-key")
    assert page.evaluate("document.getElementById('user-id').readOnly") is False
    page.fill("#user-id", "pia")
    page.click("#load-user")
    expect(page.locator("#connection-summary")).to_have_text("Connection · pia")


def answer_one_then_send_another(world, page, user: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Sign in from an app's link as `user`, start a session, have one message answered, then
    send a second (the one a limit refuses)."""
    from playwright.sync_api import expect

    page.goto(f"{world.url}/#token={mint(world, user)}")
    page.wait_for_function(f"window.consoleApp.state.loadedUser === {user!r}")
    start_session(page)
    world.fake.script(Reply([Text("One.")]), Reply([Text("Two.")]))
    page.fill("#prompt", "first")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript .result")).to_contain_text("1 turn ·")
    page.fill("#prompt", "second")
    page.keyboard.press("Enter")


def test_quota_refusals_are_said_with_the_way_to_the_usage(world, tenants, page, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    monkeypatch.setenv("USER_MESSAGES_PER_MINUTE", "1")
    monkeypatch.setenv("USER_MAX_SESSIONS", "1")
    answer_one_then_send_another(world, page, "quinn")
    card = page.locator("#transcript .error-card")
    expect(card).to_contain_text("Error: quota_exceeded")
    expect(card).to_contain_text("USER_MESSAGES_PER_MINUTE=1")
    shot(page, "quota")
    expect(page.locator("#send")).to_be_enabled()  # the refusal ended what the message started
    card.get_by_role("button", name="See usage and limits").click()
    expect(page.locator("#settings-panel")).to_be_visible()
    expect(page.locator("#usage-list")).to_contain_text("1 · at most 1 a minute")
    expect(page.locator("#usage-list")).to_contain_text("at most 1 live session at once")
    # A REST refusal (429 on /setup: a second live session) is said in the banner.
    page.click("#start-session")
    banner = page.locator("#banner")
    expect(banner).to_contain_text("USER_MAX_SESSIONS=1")
    expect(banner).to_contain_text("Settings shows the usage and limits.")
    expect(page.locator("#turn-badge")).to_have_text("Connected")  # the session open before carries on
    expect(page.locator("#prompt")).to_be_enabled()
    assert len(world.fake.requests) == 1


def test_the_days_budget_spent_is_said_and_shown(world, tenants, page, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    monkeypatch.setenv("USER_DAILY_BUDGET_USD", "0.0003")  # one reply of the fake model costs $0.0004
    answer_one_then_send_another(world, page, "dana")
    card = page.locator("#transcript .error-card")
    expect(card).to_contain_text("Error: daily_budget_reached")
    expect(card).to_contain_text("messages resume at 00:00 UTC")
    expect(card).to_contain_text("Today's budget is spent")
    expect(card.locator(".tip").last).to_have_text(re.compile(r"That is in (\d+ h( \d+ min)?|\d+ min|\d+ s)\."))
    card.get_by_role("button", name="See usage and limits").click()
    cost = page.locator("#usage-list dd").first
    expect(cost).to_contain_text("$0.0004 of $0.0003 · $0.00 left")
    expect(cost.locator(".over")).to_be_visible()
    assert len(world.fake.requests) == 1


def test_a_token_of_the_apps_identity_provider_signs_in(world, page, log: BrowserLog, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The same with a real OpenID provider's access token (npm's oidc-provider): the console
    never reads the token; GET /me names its user (`sub`, as AUTH_JWT_USER_CLAIM says)."""
    from playwright.sync_api import expect

    from tests.support.oidc import oidc_provider

    with oidc_provider() as provider:
        monkeypatch.setenv("API_KEY", "operator-key")
        monkeypatch.setenv("AUTH_JWT_ISSUER", provider.issuer)
        monkeypatch.setenv("AUTH_JWT_AUDIENCE", provider.audience)
        page.goto(f"{world.url}/#token={provider.token('alice')}")
        page.wait_for_function("window.consoleApp.state.loadedUser === 'alice'")
        expect(page.locator("#connection-summary")).to_have_text("Connection · alice · token")
        start_session(page)
        world.fake.script(Reply([Text("Hello from the provider's Alice.")]))
        page.fill("#prompt", "hello")
        page.keyboard.press("Enter")
        expect(page.locator("#transcript .result")).to_contain_text("1 turn ·")
        open_panel(page, "Settings")
        expect(page.locator("#usage-list")).to_contain_text("100 in · 20 out")
    saved = world.http.get("/users/alice/conversations", headers=OPERATOR).json()["conversations"]
    assert len(saved) == 1
    log.assert_clean()
