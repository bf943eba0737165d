"""Server tools (web, MCP) as the agent declares, shows, summarises and logs them."""

from __future__ import annotations

import logging

from chalicelib.agent.compaction import render_transcript
from chalicelib.agent.model_client import RedactTokens
from chalicelib.agent.server_tools import server_block_events, server_tools
from chalicelib.services.user_settings import UserSettings


def test_a_web_tool_error_is_shown_as_an_error() -> None:
    block = {"type": "web_fetch_tool_result", "tool_use_id": "s1", "content": {"type": "web_fetch_tool_result_error", "error_code": "url_not_allowed"}}
    assert server_block_events(block) == {"event": "tool_result", "tool_use_id": "s1", "content": block["content"], "is_error": True,
                                          "server": True, "type": "web_fetch_tool_result"}
    assert server_block_events({"type": "text", "text": "hi"}) is None


def test_without_anyone_to_ask_an_ask_server_tool_is_left_out() -> None:
    prefs = UserSettings.model_validate({"webSearch": True, "webFetch": True, "permissions": {"web_fetch": "ask"}})
    assert [t["name"] for t in server_tools(prefs).tools] == ["web_search"]
    assert [t["name"] for t in server_tools(prefs, lambda name, shown: True).tools] == ["web_search", "web_fetch"]


def test_a_summary_keeps_what_server_tools_found() -> None:
    entries = render_transcript([{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {"query": "bisect"}},
        {"type": "web_search_tool_result", "tool_use_id": "s1", "content": [{"type": "web_search_result", "title": "git-bisect docs"}]},
        {"type": "mcp_tool_use", "id": "m1", "name": "find_ticket", "server_name": "t", "input": {"id": 7}},
        {"type": "mcp_tool_result", "tool_use_id": "m1", "content": [{"type": "text", "text": "Ticket 7 is open"}]}]}])
    assert "web_search (run by Anthropic)" in entries[0] and "git-bisect docs" in entries[0]
    assert "find_ticket (run by Anthropic)" in entries[0] and "Ticket 7 is open" in entries[0]


def test_tokens_in_the_sdks_request_log_are_masked() -> None:
    record = logging.LogRecord("anthropic._base_client", logging.DEBUG, __file__, 1, "Request options: %s",
                               ({"json_data": {"mcp_servers": [{"name": "t", "authorization_token": "tok-123"}]}},), None)
    assert RedactTokens().filter(record)
    assert "tok-123" not in record.getMessage() and "'authorization_token': '********'" in record.getMessage()
