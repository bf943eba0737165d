"""The translation between the original's Socket.IO events and the plain protocol's frames."""

from __future__ import annotations

import pytest

from chalicelib.agent.session_options import SessionOptions
from chalicelib.realtime.protocol import FrameError, StartFrame, parse_client_frame
from chalicelib.realtime.socketio_events import EventError, ack_frame, ack_id, client_event, server_events
from chalicelib.services.user_settings import UserSettings


def test_client_events_become_plain_frames() -> None:
    assert client_event("message", ["hi"]) == ([{"action": "message", "prompt": "hi"}], [])
    assert client_event("message", [{"prompt": "hi", "options": {"maxTurns": 3}}])[0] == [
        {"action": "message", "prompt": "hi", "options": {"maxTurns": 3}}]
    assert client_event("clear", [])[0] == [{"action": "interrupt"}, {"action": "clear"}]
    assert client_event("get_history", [])[0] == [{"action": "get_history"}]
    with pytest.raises(EventError, match="Unknown event 'resume'"):
        client_event("resume", [{}])
    with pytest.raises(EventError, match="message takes"):
        client_event("message", [{"text": "hi"}])


def test_start_options_are_passed_on_or_answered_never_dropped() -> None:
    frames, notices = client_event("start", [{"maxTurns": 50, "model": "m-1", "systemPrompt": "x", "shiny": 1}])
    assert frames == [{"action": "start", "maxTurns": 50, "model": "m-1", "systemPrompt": "x"}]
    assert notices[0].data["unsupportedOptions"] == ["shiny"]
    start = parse_client_frame('{"action":"start","maxTurns":50,"systemPrompt":"x","resume":"abc","permissionMode":"plan"}')
    assert isinstance(start, StartFrame) and start.max_turns == 50 and start.system_prompt == "x"
    assert start.unsupported_options == ["permissionMode", "resume"]
    preset = parse_client_frame('{"action":"start","permissionMode":"default",'
                                '"systemPrompt":{"type":"preset","preset":"claude_code","append":"Be brief."}}')
    assert isinstance(preset, StartFrame) and preset.system_prompt == "Be brief." and preset.unsupported_options == []
    bare = parse_client_frame('{"action":"start","systemPrompt":{"type":"preset","preset":"claude_code"}}')
    assert isinstance(bare, StartFrame) and bare.system_prompt is None and bare.unsupported_options == ["systemPrompt"]
    with pytest.raises(FrameError, match="maxBudgetUsd"):
        parse_client_frame('{"action":"start","maxBudgetUsd":-1}')
    with pytest.raises(FrameError, match="shiny"):
        parse_client_frame('{"action":"start","shiny":1}')  # the plain protocol still refuses unknown names


@pytest.mark.parametrize(("response", "decision"), [
    ({"action": "continue"}, "allow"), ({"decision": "approve"}, "allow"),
    ({"hookSpecificOutput": {"permissionDecision": "allow"}}, "allow"),
    ({"action": "block"}, "deny"), ({"decision": "block"}, "deny"), ({"continue": False}, "deny"),
    ({"hookSpecificOutput": {"permissionDecision": "deny"}}, "deny"), ({}, "deny"), (None, "deny"), ("yes", "deny"),
])
def test_an_acknowledgement_is_a_permission_answer(response: object, decision: str) -> None:
    assert ack_frame("toolu_1", response) == {"action": "permission", "toolUseId": "toolu_1", "decision": decision}


def test_ack_ids_are_stable_and_exact_in_javascript() -> None:
    assert ack_id("toolu_1") == ack_id("toolu_1") != ack_id("toolu_2")
    assert 0 <= ack_id("toolu_1") < 2**48


def test_server_frames_become_the_originals_events() -> None:
    [status] = server_events({"event": "status", "seq": 0, "status": "ready", "unsupportedOptions": ["cwd"]})
    assert status.name == "status" and status.data["type"] == "info"
    assert status.data["message"].startswith("Session initialized") and "cwd" in status.data["message"]
    assert server_events({"event": "message", "seq": 3, "role": "user", "content": "my prompt", "uuid": "u"}) == []
    [request] = server_events({"event": "permission_request", "seq": 4, "toolUseId": "t1", "name": "bash",
                               "input": {"command": "ls"}, "timeoutSeconds": 300})
    assert (request.name, request.data["event"], request.ack_tool_use_id) == ("hook_request", "PreToolUse", "t1")
    [result] = server_events({"event": "result", "seq": 9, "turns": 2, "durationMs": 5, "costUsd": 0.1, "stopReason": "max_turns",
                              "usage": {"inputTokens": 1, "outputTokens": 2}, "interrupted": False})
    assert result.data["subtype"] == "error_max_turns" and result.data["total_cost_usd"] == 0.1
    assert result.data["usage"]["output_tokens"] == 2
    [error] = server_events({"event": "error", "seq": 0, "message": "boom", "code": "x"})
    assert error.data == {"message": "boom", "details": {"code": "x"}}
    [boundary] = server_events({"event": "status", "seq": 5, "status": "compacted", "tokensBefore": 10, "tokensAfter": 2})
    assert boundary.name == "compact_boundary" and boundary.data["compact_metadata"]["pre_tokens"] == 10
    assert server_events({"event": "permission_resolved", "seq": 6}) == []
    assert server_events({"event": "status", "seq": 0, "status": "permission_received"}) == []


def test_session_options_only_tighten_the_users_settings() -> None:
    prefs = UserSettings(system_prompt="Be kind.", max_budget_usd=1.0, permissions={"bash": "ask", "web_fetch": "deny"})
    assert SessionOptions.from_start(None, None, None, None) is None
    assert SessionOptions.from_start(None, None, ["Task", "TodoWrite"], None) == SessionOptions(
        denied_tools=["bash", "str_replace_based_edit_tool", "web_fetch", "web_search"])  # none of ours listed
    options = SessionOptions.from_start("Answer in French.", 5.0, ["Read", "Bash", "WebFetch"], ["WebSearch"])
    assert options is not None and options.denied_tools == ["web_search"]
    applied = options.apply(prefs)
    assert applied.system_prompt == "Be kind.\n\nAnswer in French."  # after the settings' own, never instead
    assert applied.max_budget_usd == 1.0  # a budget is lowered, never raised
    assert applied.permissions == {"bash": "ask", "web_fetch": "deny", "web_search": "deny"}  # allowedTools loosens nothing
    cheaper = SessionOptions(max_budget_usd=0.25).apply(prefs)
    assert cheaper.max_budget_usd == 0.25 and cheaper.system_prompt == "Be kind."
