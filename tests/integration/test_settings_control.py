"""The settings that put the agent under the user's control (issue 14): validation answers 400
with the rule, and MCP tokens are write-only."""

from __future__ import annotations

import json

import pytest

from tests.support.api import Api

TOKEN = "tok-" + "s3cr3t" * 4
SERVER = {"name": "tickets", "url": "https://mcp.example.com/sse", "authorizationToken": TOKEN, "allowedTools": ["find_ticket"]}


@pytest.mark.parametrize(
    "body, rule",
    [
        ({"permissions": {"rm": "ask"}}, "permissions: unknown tool 'rm'; the keys are bash, str_replace_based_edit_tool, web_search, web_fetch"),
        ({"permissions": {"bash": "sometimes"}}, "permissions.bash: Input should be 'allow', 'ask' or 'deny'"),
        ({"permissions": {"wiki": "ask"}}, "permissions: unknown tool 'wiki'"),  # no such MCP server
        ({"mcpServers": [{**SERVER, "url": "http://mcp.example.com/sse"}]}, "mcpServers.0.url: Value error, must be an https:// URL"),
        ({"mcpServers": [{**SERVER, "authorizationToken": "x" * 5000}]},
         "mcpServers.0.authorizationToken: Value error, is 5000 characters; an authorization token may have at most 4096"),
        ({"mcpServers": [SERVER, SERVER]}, "mcpServers: each server needs a unique name"),
        ({"mcpServers": [{**SERVER, "name": "bash"}]}, "'bash' is a built-in tool's name"),
        ({"webSearch": {"allowedDomains": ["bad domain"]}}, "webSearch"),
        ({"webFetch": "yes"}, "webFetch"),
        ({"maxBudgetUsd": 0}, "maxBudgetUsd: Input should be greater than 0"),
    ],
)
def test_invalid_control_settings_are_400_with_the_rule(api: Api, body: dict, rule: str) -> None:  # type: ignore[type-arg]
    response = api.send("PUT", "/users/val/settings", body)
    assert response.status_code == 400, response.body.decode()
    assert response.json_body["code"] == "invalid_settings" and rule in response.json_body["error"]
    assert TOKEN not in response.body.decode()  # a refused token is not echoed either
    assert api.get("/users/val/settings").json_body["updated"] is None


def test_mcp_tokens_are_write_only(api: Api) -> None:
    put = api.send("PUT", "/users/tok/settings", {"mcpServers": [SERVER], "permissions": {"bash": "ask", "tickets": "allow"}})
    assert put.status_code == 200, put.body.decode()
    assert TOKEN not in put.body.decode() and put.json_body["settings"]["mcpServers"][0]["authorizationToken"] == "********"
    got = api.get("/users/tok/settings")
    assert TOKEN not in got.body.decode() and got.json_body["settings"]["mcpServers"][0] == {**SERVER, "authorizationToken": "********"}
    assert json.loads(api.raw("users/tok/settings/preferences.json"))["mcpServers"][0]["authorizationToken"] == TOKEN
    # What GET showed, sent back whole (the console's save), keeps the stored token.
    again = api.send("PUT", "/users/tok/settings", {**got.json_body["settings"], "maxBudgetUsd": 0.5})
    assert again.status_code == 200, again.body.decode()
    assert json.loads(api.raw("users/tok/settings/preferences.json"))["mcpServers"][0]["authorizationToken"] == TOKEN
    # A PATCH of another field keeps it too; a PATCH with a new token replaces it.
    assert api.send("PATCH", "/users/tok/settings", {"webSearch": True}).status_code == 200
    assert json.loads(api.raw("users/tok/settings/preferences.json"))["mcpServers"][0]["authorizationToken"] == TOKEN
    patched = api.send("PATCH", "/users/tok/settings", {"mcpServers": [{**SERVER, "authorizationToken": "tok-new"}]})
    assert patched.status_code == 200 and "tok-new" not in patched.body.decode()
    assert json.loads(api.raw("users/tok/settings/preferences.json"))["mcpServers"][0]["authorizationToken"] == "tok-new"
    # The mask under a name that has no stored token cannot be resolved: say so.
    other = api.send("PATCH", "/users/tok/settings", {"mcpServers": [{**SERVER, "name": "other", "authorizationToken": "********"}]})
    assert other.status_code == 400 and "send the real authorizationToken" in other.json_body["error"]
