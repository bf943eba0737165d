"""The original's Socket.IO protocol through ./scripts/dev's gateway, with the real
socket.io-client from npm run by node (tests/node), the scripted Messages API and a real
sandbox: the guide's snippet, the original's useAgent flow, interrupt, clear, reconnect,
permission asks answered by acknowledgement, and refusals.

Each flow runs over python-socketio at /socket.io/ and over the Engine.IO framing of the
Lambda handlers: the gateway's /ws runs app.py's $connect/$default/$disconnect handlers as API
Gateway does, the open packet is sent by the turn runner Lambda through the Invoke and
management APIs, exactly the deployed path (client options as the README gives them)."""

from __future__ import annotations

import json
import shutil

import pytest
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.gateway import receive_until
from tests.support.node import events, run_scenario

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_POLL_SECONDS", "0.1")


#: How a client reaches each edge: python-socketio (both transports), or API Gateway's framing.
EDGES = {
    "socketio-websocket": {"transports": ["websocket", "polling"]},
    "socketio-polling": {"transports": ["polling"]},
    "lambda": {"transports": ["websocket"], "path": "/ws", "addTrailingSlash": False},
}
BOTH = ["socketio-websocket", "lambda"]


def _agent(world, session: str, edge: str = "socketio-websocket", **extra):  # type: ignore[no-untyped-def]
    token = world.setup(session, "alice")["token"]
    return {"url": world.url, "sessionId": session, "auth": {"token": token}, **EDGES[edge], **extra}


def test_the_guides_snippet_verbatim(world) -> None:  # type: ignore[no-untyped-def]
    token = world.setup("session-abc", "alice")["token"]
    world.fake.script(Reply([Text("Let us look at the stack trace.")]))
    result = run_scenario("guide", {"guideUrl": f"{world.url}/ws?sessionId=session-abc&token={token}"})
    assert result["namespace"] == "/ws"
    statuses = [s["message"] for s in events(result, "status")]
    assert "Session initialized" in statuses
    assert "".join(s["content"] for s in events(result, "stream")) == "Let us look at the stack trace."
    [assistant] = events(result, "message")
    assert assistant["role"] == "assistant" and assistant["content"][0]["text"] == "Let us look at the stack trace."
    [done] = events(result, "result")
    assert done["subtype"] == "success" and done["num_turns"] == 1 and done["usage"]["output_tokens"] == 20
    # start's options reached the model call (the start may arrive after the message: the
    # client sends its buffered emits first, so the model is checked only when start won).
    assert world.fake.requests[0]["messages"][-1]["content"][-1]["text"] == "Help me debug this issue"


@pytest.mark.parametrize("edge", list(EDGES))
def test_the_use_agent_flow(world, edge) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Reply([ToolUse("bash", {"command": "echo from-the-sandbox"})]), Reply([Text("It printed from-the-sandbox.")]))
    result = run_scenario("useAgent", _agent(world, f"ua-{edge}", edge, expectHistory=True))
    assert result["transport"] == EDGES[edge]["transports"][0]
    names = [e["event"] for e in result["events"]]
    assert names.index("history") < names.index("stream") < names.index("result")
    assert events(result, "history")[0]["messages"] == []
    pre = [n["data"] for n in events(result, "hook_notification") if n["event"] == "PreToolUse"]
    post = [n["data"] for n in events(result, "hook_notification") if n["event"] == "PostToolUse"]
    assert pre[0]["tool_name"] == "bash" and pre[0]["tool_input"] == {"command": "echo from-the-sandbox"}
    assert post[0]["tool_response"].strip() == "from-the-sandbox" and post[0]["is_error"] is False
    messages = events(result, "message")
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]  # no echo of the prompt
    assert messages[1]["content"][0]["type"] == "tool_result"
    assert messages[-1]["content"][0]["text"] == "It printed from-the-sandbox."
    [done] = events(result, "result")
    assert done["num_turns"] == 2 and done["is_error"] is False


@pytest.mark.parametrize("edge", BOTH)
def test_interrupt(world, edge) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Reply([Text("once upon a time " * 200, chunks=200)], delay=0.05))
    result = run_scenario("interrupt", _agent(world, f"sio-int-{edge}", edge))
    assert "Interrupted" in [s["message"] for s in events(result, "status")]
    [done] = events(result, "result")
    assert done["interrupted"] is True and done["stop_reason"] == "interrupted"
    partial = [m for m in events(result, "message") if m.get("partial")]
    assert partial and len(partial[0]["content"][0]["text"]) < len("once upon a time " * 200)


@pytest.mark.parametrize("edge", BOTH)
def test_clear(world, edge) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Reply([Text("Noted.")]))
    result = run_scenario("clear", _agent(world, f"sio-clear-{edge}", edge))
    [cleared] = events(result, "cleared")
    assert cleared["type"] == "info" and cleared["message"] == "Session cleared"
    assert cleared["conversationId"] == f"sio-clear-{edge}"
    assert events(result, "history")[-1]["messages"] == []
    assert world.http.get(f"/users/alice/conversations/sio-clear-{edge}").json()["conversation"]["messages"] == []


@pytest.mark.parametrize("edge", BOTH)
def test_reconnect_with_the_same_session_id(world, edge) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Reply([Text("First answer.")]), Reply([Text("Second answer.")]))
    result = run_scenario("reconnect", _agent(world, f"sio-re-{edge}", edge))
    assert [s["message"] for s in events(result, "status", on="first")].count("Session resumed") == 0
    second = [e["event"] for e in result["events"] if e["on"] == "second"]
    assert second[:2] == ["status", "history"]
    assert events(result, "status", on="second")[0]["message"] == "Session resumed"
    histories = events(result, "history", on="second")
    assert [m["role"] for m in histories[0]["messages"]] == ["user", "assistant"]
    assert histories[0]["messages"] == histories[1]["messages"]
    assert [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in histories[-1]["messages"]] == [
        "First question", "First answer.", "Second question", "Second answer."]
    # The second connection saw only its own turn live: nothing of the first replayed.
    assert "".join(s["content"] for s in events(result, "stream", on="second")) == "Second answer."


@pytest.mark.parametrize("edge", BOTH)
@pytest.mark.parametrize(("answer", "allowed"), [({"action": "continue"}, True), ({"action": "block"}, False),
                                                 ({"hookSpecificOutput": {"permissionDecision": "deny"}}, False)])
def test_a_permission_ask_answered_by_acknowledgement(world, answer, allowed, edge) -> None:  # type: ignore[no-untyped-def]
    assert world.http.put("/users/alice/settings", json={"permissions": {"bash": "ask"}}).status_code == 200
    world.fake.script(Reply([ToolUse("bash", {"command": "echo ran-it"})]), Reply([Text("Done.")]))
    result = run_scenario("permission", _agent(world, f"sio-perm-{allowed}-{len(answer)}-{edge}", edge, answer=answer))
    [asked] = events(result, "hook_request")
    assert asked["event"] == "PreToolUse"
    assert asked["data"]["tool_name"] == "bash" and asked["data"]["tool_input"] == {"command": "echo ran-it"}
    post = [n["data"] for n in events(result, "hook_notification") if n["event"] == "PostToolUse"]
    if allowed:
        assert post[0]["tool_response"].strip() == "ran-it" and post[0]["is_error"] is False
    else:
        assert post[0]["is_error"] is True and "declined" in str(post[0]["tool_response"]).lower()
    assert events(result, "result")[0]["is_error"] is False


@pytest.mark.parametrize("edge", BOTH)
def test_refusals_and_bad_events(world, edge) -> None:  # type: ignore[no-untyped-def]
    result = run_scenario("errors", _agent(world, f"sio-err-{edge}", edge))
    [missing] = events(result, "connect_error", on="no-credentials")
    assert "Missing credentials" in missing["message"] and "auth: {token}" in missing["message"]
    assert missing["data"] == {"code": "missing_credentials"}
    [wrong] = events(result, "connect_error", on="wrong-token")
    assert wrong["data"] == {"code": "invalid_token"}
    errors = events(result, "error", on="ok")
    assert errors[0]["details"]["code"] == "invalid_frame" and "prompt" in errors[0]["message"]
    assert errors[1]["details"]["code"] == "unknown_event" and "launch_missiles" in errors[1]["message"]
    statuses = events(result, "status", on="ok")
    unknown = next(s for s in statuses if s.get("status") == "unknown_options")
    assert unknown["unsupportedOptions"] == ["frobnicate"]
    ready = next(s for s in statuses if s.get("status") == "ready")
    assert ready["unsupportedOptions"] == ["cwd"] and "cwd" in ready["message"]


@pytest.mark.parametrize("edge", BOTH)
def test_the_operator_key_and_user_id_set_a_new_session_up_on_connect(world, monkeypatch: pytest.MonkeyPatch, edge) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("API_KEY", "operator-key")
    world.fake.script(Reply([Text("Hello Bob.")]))
    params = {"url": world.url, "sessionId": f"sio-new-{edge}", "auth": {"apiKey": "operator-key", "userId": "bob"}, **EDGES[edge]}
    result = run_scenario("useAgent", params)
    assert events(result, "result")[0]["is_error"] is False
    saved = world.http.get(f"/users/bob/conversations/sio-new-{edge}", headers={"Authorization": "Bearer operator-key"}).json()
    assert saved["conversation"]["messages"][-1]["content"][0]["text"] == "Hello Bob."
    without_user = run_scenario("connectOnly", {**params, "sessionId": f"sio-other-{edge}", "auth": {"apiKey": "operator-key"}})
    assert events(without_user, "connect_error")[0]["data"] == {"code": "user_id_missing"}
    wrong_key = run_scenario("connectOnly", {**params, "sessionId": f"sio-other-{edge}", "auth": {"apiKey": "nope", "userId": "bob"}})
    assert events(wrong_key, "connect_error")[0]["data"] == {"code": "invalid_api_key"}
    taken = run_scenario("connectOnly", {**params, "auth": {"apiKey": "operator-key", "userId": "eve"}})
    assert events(taken, "connect_error")[0]["data"] == {"code": "session_owned_by_another_user"}


START = {"systemPrompt": "Answer in French.", "disallowedTools": ["Bash"], "maxBudgetUsd": 0.0001, "maxTurns": 5}


def _check_start_applied(world) -> None:  # type: ignore[no-untyped-def]
    request = world.fake.requests[-1]
    assert "Answer in French." in json.dumps(request["system"])


@pytest.mark.parametrize("edge", BOTH)
def test_start_options_apply_to_the_session(world, edge) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Reply([ToolUse("bash", {"command": "echo should-not-run"})]), Reply([Text("Fini.")]))
    result = run_scenario("startThenMessage", _agent(world, f"sio-start-{edge}", edge, start=START))
    ready = next(s for s in events(result, "status") if s.get("status") == "ready")
    assert "unsupportedOptions" not in ready
    _check_start_applied(world)
    post = next(n["data"] for n in events(result, "hook_notification") if n["event"] == "PostToolUse")
    assert post["is_error"] is True and "do not allow the bash tool" in post["tool_response"]
    [done] = events(result, "result")
    assert done["subtype"] == "error_max_budget_usd" and done["stop_reason"] == "budget_reached"


def test_the_plain_protocols_start_takes_the_same_options(world) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(Reply([ToolUse("bash", {"command": "echo should-not-run"})]), Reply([Text("Fini.")]))
    setup = world.setup("plain-start", "alice")
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start", **START, "permissionMode": "bypassPermissions"}))
        ready = receive_until(ws, "status")[-1]
        assert ready["status"] == "ready" and ready["unsupportedOptions"] == ["permissionMode"]
        ws.send(json.dumps({"action": "message", "prompt": "Go"}))
        frames = receive_until(ws, "result")
    _check_start_applied(world)
    tool_result = next(f for f in frames if f["event"] == "tool_result")
    assert tool_result["is_error"] is True and "do not allow the bash tool" in tool_result["content"]
    assert frames[-1]["stopReason"] == "budget_reached"


@pytest.mark.parametrize("edge", BOTH)
def test_user_tokens_open_only_their_own_users_sessions(world, monkeypatch: pytest.MonkeyPatch, edge) -> None:  # type: ignore[no-untyped-def]
    """A user token (`auth: {token}` or `?access_token=`) opens its own user's sessions, and
    sets a new id up for that user, as on the plain websocket; another user's is refused."""
    monkeypatch.setenv("API_KEY", "operator-key")
    monkeypatch.setenv("USER_TOKEN_SECRET", "user-token-secret-for-tests-0123456789")
    operator = {"Authorization": "Bearer operator-key"}
    alice, bob = (world.http.post(f"/users/{u}/tokens", headers=operator).json()["token"] for u in ("alice", "bob"))
    session = f"sio-tok-{edge}"
    params = {"url": world.url, "sessionId": session, **EDGES[edge]}
    world.fake.script(Reply([Text("Hello Alice.")]))
    result = run_scenario("useAgent", {**params, "auth": {"token": alice}})
    assert events(result, "result")[0]["is_error"] is False
    saved = world.http.get(f"/users/alice/conversations/{session}", headers=operator).json()
    assert saved["conversation"]["messages"][-1]["content"][0]["text"] == "Hello Alice."
    assert run_scenario("connectOnly", {**params, "query": {"access_token": alice}})["connected"] is True
    for case in ({"auth": {"token": bob}}, {"query": {"access_token": bob}},
                 {"sessionId": f"{session}-new", "auth": {"token": bob, "userId": "alice"}}):
        refused = run_scenario("connectOnly", {**params, **case})
        assert refused["connected"] is False and events(refused, "connect_error")[0]["data"] == {"code": "forbidden_user"}, case
    tampered = alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB")
    forged = run_scenario("connectOnly", {**params, "auth": {"token": tampered}})
    assert events(forged, "connect_error")[0]["data"] == {"code": "invalid_token"}
    assert world.http.get(f"/sessions/{session}-new/files", headers=operator).status_code == 404
    assert len(world.fake.requests) == 1


@pytest.mark.parametrize("edge", BOTH)
def test_the_connection_cap_and_a_flood_of_events(world, monkeypatch: pytest.MonkeyPatch, edge) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WS_CONNECTIONS_PER_SESSION", "1")
    monkeypatch.setenv("WS_FRAMES_PER_SECOND", "5")
    result = run_scenario("limits", {**_agent(world, f"sio-limits-{edge}", edge), "flood": 400})
    [refused] = events(result, "connect_error", on="second")
    assert refused["data"] == {"code": "too_many_connections"} and "WS_CONNECTIONS_PER_SESSION" in refused["message"]
    histories = events(result, "history", on="first")
    assert len(histories) < 50  # at most the burst and what refilled, not 400
    if edge != "lambda":  # over API Gateway's framing a refused packet gets no answer
        assert histories
        errors = events(result, "error", on="first")
        assert errors and {e["details"]["code"] for e in errors} == {"frame_rate_exceeded"}
    assert result["disconnectReason"] in ("io server disconnect", "transport close")
