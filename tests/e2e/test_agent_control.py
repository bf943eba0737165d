"""The agent under the user's control (issue 14), end to end through the local gateway: permission
prompts over the websocket, budgets, web tools and MCP servers, against the scripted Messages API
and a real bwrap sandbox."""

from __future__ import annotations

import json
import logging
import shutil
import time

import pytest
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import Reply, ServerToolResult, ServerToolUse, Text, ToolUse
from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_POLL_SECONDS", "0.1")


def _settings(world, user: str, body: dict) -> None:  # type: ignore[no-untyped-def, type-arg]
    response = world.http.put(f"/users/{user}/settings", json=body)
    assert response.status_code == 200, response.text


def _tool_results(request: dict) -> list[dict]:  # type: ignore[type-arg]
    return [b for b in request["messages"][-1]["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


def test_a_permission_asked_and_approved_runs_the_tool(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "perm-a", {"permissions": {"bash": "ask"}})
    setup = world.setup("sess-perm-a", "perm-a")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo approved-ran > /workspace/out.txt && cat /workspace/out.txt"})]),
                      Reply([Text("Done.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "write a file"}))
        asked = receive_until(ws, "permission_request")
        request = asked[-1]
        assert request["name"] == "bash" and "approved-ran" in request["input"]["command"] and request["seq"] > 0
        # Nothing ran before the answer.
        assert not any(f["event"] == "tool_result" for f in asked)
        ws.send(json.dumps({"action": "permission", "toolUseId": request["toolUseId"], "decision": "allow", "remember": False}))
        frames = receive_until(ws, "result")
    ack = next(f for f in frames if f["event"] == "status" and f.get("status") == "permission_received")
    assert ack["decision"] == "allow" and ack["seq"] == 0
    resolved = next(f for f in frames if f["event"] == "permission_resolved")
    assert resolved["decision"] == "allow" and resolved["reason"] == "user"
    result = next(f for f in frames if f["event"] == "tool_result")
    assert result["content"].strip() == "approved-ran" and not result["is_error"]
    assert _tool_results(world.fake.requests[1])[0]["content"].strip() == "approved-ran"


def test_a_denied_permission_tells_the_model_and_runs_nothing(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "perm-d", {"permissions": {"str_replace_based_edit_tool": "ask"}})
    setup = world.setup("sess-perm-d", "perm-d")
    world.fake.script(Reply([ToolUse("str_replace_based_edit_tool", {"command": "create", "path": "/workspace/no.txt", "file_text": "x"})]),
                      Reply([Text("Understood.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "create it"}))
        request = receive_until(ws, "permission_request")[-1]
        ws.send(json.dumps({"action": "permission", "toolUseId": request["toolUseId"], "decision": "deny"}))
        frames = receive_until(ws, "result")
    sent = _tool_results(world.fake.requests[1])[0]
    assert sent["is_error"] is True and "The user declined this str_replace_based_edit_tool call" in sent["content"]
    assert next(f for f in frames if f["event"] == "tool_result")["is_error"] is True
    assert not list((world.data_dir.parent / "sandboxes").rglob("no.txt"))


def test_a_remembered_answer_is_not_asked_again_in_the_session(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "perm-r", {"permissions": {"bash": "ask"}})
    setup = world.setup("sess-perm-r", "perm-r")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo one"})]), Reply([ToolUse("bash", {"command": "echo two"})]),
                      Reply([Text("first done")]), Reply([ToolUse("bash", {"command": "echo three"})]), Reply([Text("second done")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "count"}))
        request = receive_until(ws, "permission_request")[-1]
        ws.send(json.dumps({"action": "permission", "toolUseId": request["toolUseId"], "decision": "allow", "remember": True}))
        frames = receive_until(ws, "result")
        ws.send(json.dumps({"action": "message", "prompt": "again"}))
        frames += receive_until(ws, "result")
    assert sum(1 for f in frames if f["event"] == "permission_request") == 0  # only the first one, seen above
    outputs = [f["content"].strip() for f in frames if f["event"] == "tool_result"]
    assert outputs == ["one", "two", "three"]


@pytest.mark.parametrize("reset", ["setup", "clear"])
def test_a_remembered_answer_ends_at_setup_and_clear(world, reset: str) -> None:  # type: ignore[no-untyped-def]
    _settings(world, f"perm-{reset}", {"permissions": {"bash": "ask"}})
    setup = world.setup(f"sess-perm-{reset}", f"perm-{reset}")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo harmless"})]), Reply([Text("done")]),
                      Reply([ToolUse("bash", {"command": "rm -rf /workspace/*"})]), Reply([Text("stopped")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "something harmless"}))
        request = receive_until(ws, "permission_request")[-1]
        ws.send(json.dumps({"action": "permission", "toolUseId": request["toolUseId"], "decision": "allow", "remember": True}))
        receive_until(ws, "result")
        if reset == "clear":
            ws.send(json.dumps({"action": "clear"}))
            receive_until(ws, "cleared")
    if reset == "setup":
        setup = world.setup(f"sess-perm-{reset}", f"perm-{reset}")
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "now something destructive"}))
        asked = receive_until(ws, "permission_request")[-1]  # asked again: the old "allow" is gone
        assert asked["name"] == "bash" and "rm -rf" in json.dumps(asked)
        ws.send(json.dumps({"action": "permission", "toolUseId": asked["toolUseId"], "decision": "deny"}))
        frames = receive_until(ws, "result")
    assert next(f for f in frames if f["event"] == "tool_result")["is_error"] is True


def test_an_unanswered_permission_times_out_as_a_denial(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERMISSION_TIMEOUT_SECONDS", "0.6")
    _settings(world, "perm-t", {"permissions": {"bash": "ask"}})
    setup = world.setup("sess-perm-t", "perm-t")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo never"})]), Reply([Text("No answer, fine.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "try"}))
        request = receive_until(ws, "permission_request")[-1]
        assert request["timeoutSeconds"] == 0.6
        frames = receive_until(ws, "result", timeout=20)
        # Answering after the timeout is refused, saying why.
        ws.send(json.dumps({"action": "permission", "toolUseId": request["toolUseId"], "decision": "allow"}))
        late = receive_until(ws, "error")[-1]
    assert late["code"] == "no_pending_permission"
    assert next(f for f in frames if f["event"] == "permission_resolved")["reason"] == "timeout"
    sent = _tool_results(world.fake.requests[1])[0]
    assert sent["is_error"] is True and "did not answer" in sent["content"] and "0.6 s" in sent["content"]


def test_a_permission_request_survives_a_reconnect(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "perm-c", {"permissions": {"bash": "ask"}})
    setup = world.setup("sess-perm-c", "perm-c")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo after-reconnect"})]), Reply([Text("Done.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "go"}))
        frames = receive_until(ws, "permission_request")
    before = max(f["seq"] for f in frames if f["event"] != "permission_request")
    # The connection dropped while the turn waits; the new one resumes from before the request.
    time.sleep(0.3)
    with connect(world.ws_url(setup)) as ws2:
        ws2.send(json.dumps({"action": "resume", "afterSeq": before}))
        replayed = receive_until(ws2, "permission_request", timeout=10)[-1]
        assert replayed["toolUseId"] == frames[-1]["toolUseId"] and replayed["seq"] == frames[-1]["seq"]
        ws2.send(json.dumps({"action": "permission", "toolUseId": replayed["toolUseId"], "decision": "allow"}))
        rest = receive_until(ws2, "result")
    assert next(f for f in rest if f["event"] == "tool_result")["content"].strip() == "after-reconnect"


def test_an_interrupt_ends_the_wait(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "perm-i", {"permissions": {"bash": "ask"}})
    setup = world.setup("sess-perm-i", "perm-i")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo never"})]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "go"}))
        receive_until(ws, "permission_request")
        started = time.monotonic()
        ws.send(json.dumps({"action": "interrupt"}))
        frames = receive_until(ws, "result", timeout=20)
        waited = time.monotonic() - started
    assert frames[-1]["interrupted"] and frames[-1]["stopReason"] == "interrupted"
    assert next(f for f in frames if f["event"] == "permission_resolved")["reason"] == "interrupted"
    assert waited < 10  # not the 300 s timeout
    saved = world.http.get("/users/perm-i/conversations/sess-perm-i").json()["conversation"]["messages"]
    # The history stays valid for the next call: the tool_use has its (error) result.
    assert saved[-1]["content"][0]["type"] == "tool_result" and saved[-1]["content"][0]["is_error"]
    assert len(world.fake.requests) == 1


def test_deny_in_settings_never_runs_and_never_asks(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "perm-x", {"permissions": {"bash": "deny"}})
    setup = world.setup("sess-perm-x", "perm-x")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo no"})]), Reply([Text("ok")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "go"}))
        frames = receive_until(ws, "result")
    assert not any(f["event"] == "permission_request" for f in frames)
    assert "permissions: deny" in _tool_results(world.fake.requests[1])[0]["content"]


def test_a_budget_stops_the_loop_after_the_step_that_reached_it(world) -> None:  # type: ignore[no-untyped-def]
    # claude-sonnet-5-5 costs $2 / $10 per million tokens: each reply below costs $0.0102.
    _settings(world, "budget", {"maxBudgetUsd": 0.015})
    setup = world.setup("sess-budget", "budget")
    world.fake.script(*[Reply([ToolUse("bash", {"command": f"echo step{i}"})], input_tokens=5000, output_tokens=20) for i in range(5)])
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "loop"}))
        frames = receive_until(ws, "result")
    status = next(f for f in frames if f["event"] == "status" and f.get("status") == "budget_reached")
    assert status["budgetUsd"] == 0.015 and status["costUsd"] == pytest.approx(0.0204)
    result = frames[-1]
    assert result["stopReason"] == "budget_reached" and result["turns"] == 2 and "budget" in result["message"]
    # Both steps finished (their tools ran) and nothing more was asked of the model.
    assert [f["content"].strip() for f in frames if f["event"] == "tool_result"] == ["step0", "step1"]
    assert len(world.fake.requests) == 2


def test_the_server_budget_ceiling_caps_the_users(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MAX_BUDGET_USD", "0.01")
    _settings(world, "ceiling", {"maxBudgetUsd": 100})
    setup = world.setup("sess-ceiling", "ceiling")
    world.fake.script(*[Reply([ToolUse("bash", {"command": "true"})], input_tokens=5000, output_tokens=20) for _ in range(3)])
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "loop"}))
        frames = receive_until(ws, "result")
    assert frames[-1]["stopReason"] == "budget_reached" and frames[-1]["budgetUsd"] == 0.01 and frames[-1]["turns"] == 1


WEB_SEARCH_RESULT = [{"type": "web_search_result", "url": "https://docs.example.com/a", "title": "A", "encrypted_content": "enc-abc",
                      "page_age": None}]
MCP_TOKEN = "mcp-secret-token-4f1e"


def test_web_and_mcp_tools_are_declared_streamed_stored_and_sent_back(world, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    _settings(world, "webby", {
        "webSearch": {"allowedDomains": ["docs.example.com"]}, "webFetch": True,
        "mcpServers": [{"name": "tickets", "url": "https://mcp.example.com/sse", "authorizationToken": MCP_TOKEN,
                        "allowedTools": ["find_ticket"]},
                       {"name": "wiki", "url": "https://wiki.example.com/mcp"}],
    })
    setup = world.setup("sess-web", "webby")
    search = ServerToolUse("web_search", {"query": "deploy docs"})
    mcp = ServerToolUse("find_ticket", {"id": 42}, server_name="tickets")
    world.fake.script(
        Reply([Text("Searching."), search, ServerToolResult("web_search_tool_result", search.id, WEB_SEARCH_RESULT),
               mcp, ServerToolResult("mcp_tool_result", mcp.id, [{"type": "text", "text": "Ticket 42: open"}], is_error=False),
               Text("Found both.")]),
        Reply([Text("Still remembered.")]),
    )
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "find it"}))
        frames = receive_until(ws, "result")
        ws.send(json.dumps({"action": "message", "prompt": "and again"}))
        frames += receive_until(ws, "result")
    first, second = world.fake.requests
    # The definitions, exactly as the API documents them, and the MCP connector's beta header.
    assert first["tools"][2:] == [
        {"type": "web_search_20260318", "name": "web_search", "allowed_domains": ["docs.example.com"]},
        {"type": "web_fetch_20260318", "name": "web_fetch"},
        {"type": "mcp_toolset", "mcp_server_name": "tickets", "default_config": {"enabled": False},
         "configs": {"find_ticket": {"enabled": True}}},
        {"type": "mcp_toolset", "mcp_server_name": "wiki"},
    ]
    assert first["mcp_servers"] == [
        {"type": "url", "url": "https://mcp.example.com/sse", "name": "tickets", "authorization_token": MCP_TOKEN},
        {"type": "url", "url": "https://wiki.example.com/mcp", "name": "wiki"},
    ]
    assert "mcp-client-2026-09-15" in world.fake.headers[0]["anthropic-beta"]
    # Streamed to the client as tool events marked server: true.
    uses = [f for f in frames if f["event"] == "tool_use"]
    assert [(u["name"], u["server"], u["input"]) for u in uses] == [("web_search", True, {"query": "deploy docs"}),
                                                                     ("find_ticket", True, {"id": 42})]
    assert uses[1]["serverName"] == "tickets"
    results = [f for f in frames if f["event"] == "tool_result"]
    assert [(r["tool_use_id"], r["server"], r["is_error"]) for r in results] == [(search.id, True, False), (mcp.id, True, False)]
    assert results[0]["content"] == WEB_SEARCH_RESULT
    # Stored, and sent back intact in the next request.
    saved = world.http.get("/users/webby/conversations/sess-web").json()["conversation"]["messages"]
    stored_reply = saved[1]["content"]
    assert [b["type"] for b in stored_reply] == ["text", "server_tool_use", "web_search_tool_result", "mcp_tool_use", "mcp_tool_result", "text"]
    sent_back = [{k: v for k, v in b.items() if k != "cache_control"} for b in second["messages"][1]["content"]]
    assert sent_back == stored_reply
    assert stored_reply[2] == {"type": "web_search_tool_result", "tool_use_id": search.id, "content": WEB_SEARCH_RESULT}
    assert stored_reply[3] == {"type": "mcp_tool_use", "id": mcp.id, "name": "find_ticket", "server_name": "tickets", "input": {"id": 42}}
    # The token never reaches the client, the stored conversation, the sandbox or a log.
    assert MCP_TOKEN not in json.dumps(frames) and MCP_TOKEN not in json.dumps(saved)
    assert MCP_TOKEN not in caplog.text
    assert not any(MCP_TOKEN in p.read_text(errors="ignore") for p in (world.data_dir.parent / "sandboxes").rglob("*") if p.is_file())
    # With the MCP servers removed from the settings, the history's MCP blocks still go to the beta API.
    assert world.http.patch("/users/webby/settings", json={"mcpServers": None}).status_code == 200
    world.fake.script(Reply([Text("No servers now.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "third"}))
        receive_until(ws, "result")
    assert "mcp_servers" not in world.fake.requests[2] and "mcp-client-2026-09-15" in world.fake.headers[2]["anthropic-beta"]
    assert [b["type"] for b in world.fake.requests[2]["messages"][1]["content"]][3:5] == ["mcp_tool_use", "mcp_tool_result"]


def test_denied_server_tools_are_not_declared(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "nodeny", {"webSearch": True, "webFetch": True, "mcpServers": [{"name": "wiki", "url": "https://wiki.example.com/mcp"}],
                                "permissions": {"web_fetch": "deny", "wiki": "deny"}})
    setup = world.setup("sess-nodeny", "nodeny")
    world.fake.script(Reply([Text("hi")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "hi"}))
        receive_until(ws, "result")
    request = world.fake.requests[0]
    assert request["tools"][2:] == [{"type": "web_search_20260318", "name": "web_search"}]
    assert "mcp_servers" not in request and "anthropic-beta" not in world.fake.headers[0]


def test_a_paused_server_tool_turn_is_sent_back_for_the_model_to_go_on(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "pauser", {"webFetch": True})
    setup = world.setup("sess-pause", "pauser")
    fetch = ServerToolUse("web_fetch", {"url": "https://docs.example.com/long"})
    world.fake.script(Reply([Text("Fetching."), fetch], stop_reason="pause_turn"),
                      Reply([ServerToolResult("web_fetch_tool_result", fetch.id, {"type": "web_fetch_result", "url": "https://docs.example.com/long",
                                                                                    "content": {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Long page."}}}),
                             Text("The page says: long page.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "read it"}))
        frames = receive_until(ws, "result")
    assert frames[-1]["stopReason"] == "end_turn" and frames[-1]["turns"] == 2
    second = world.fake.requests[1]
    # The paused reply goes back as the last message, untouched, with no user turn after it.
    assert second["messages"][-1]["role"] == "assistant"
    assert [b["type"] for b in second["messages"][-1]["content"]] == ["text", "server_tool_use"]
    assert next(f for f in frames if f["event"] == "tool_result")["content"]["type"] == "web_fetch_result"


def test_server_tools_set_to_ask_are_asked_for_once_per_message(world) -> None:  # type: ignore[no-untyped-def]
    _settings(world, "srvask", {"webSearch": True, "mcpServers": [{"name": "wiki", "url": "https://wiki.example.com/mcp", "authorizationToken": MCP_TOKEN}],
                                "permissions": {"web_search": "ask", "wiki": "ask"}})
    setup = world.setup("sess-srvask", "srvask")
    world.fake.script(Reply([Text("one")]), Reply([Text("two")]), Reply([Text("three")]))
    asked: list[dict] = []  # type: ignore[type-arg]
    with connect(world.ws_url(setup)) as ws:
        # Message 1: web search declined, the MCP server approved for the rest of the session.
        ws.send(json.dumps({"action": "message", "prompt": "first"}))
        asked.append(receive_until(ws, "permission_request")[-1])
        ws.send(json.dumps({"action": "permission", "toolUseId": asked[-1]["toolUseId"], "decision": "deny"}))
        asked.append(receive_until(ws, "permission_request")[-1])
        ws.send(json.dumps({"action": "permission", "toolUseId": asked[-1]["toolUseId"], "decision": "allow", "remember": True}))
        receive_until(ws, "result")
        # Message 2: only web search is asked again; approved this time.
        ws.send(json.dumps({"action": "message", "prompt": "second"}))
        frames = receive_until(ws, "permission_request")
        asked.append(frames[-1])
        ws.send(json.dumps({"action": "permission", "toolUseId": asked[-1]["toolUseId"], "decision": "allow"}))
        frames += receive_until(ws, "result")
    assert [(a["name"], a["input"]["scope"]) for a in asked] == [("web_search", "this message"), ("wiki", "this message"), ("web_search", "this message")]
    assert asked[1]["input"]["url"] == "https://wiki.example.com/mcp" and MCP_TOKEN not in json.dumps(asked)
    assert sum(1 for f in frames if f["event"] == "permission_request") == 1
    first, second = world.fake.requests[:2]
    assert [t.get("name") or t.get("mcp_server_name") for t in first["tools"][2:]] == ["wiki"]
    assert [t.get("name") or t.get("mcp_server_name") for t in second["tools"][2:]] == ["web_search", "wiki"]
    assert first["mcp_servers"][0]["authorization_token"] == MCP_TOKEN
