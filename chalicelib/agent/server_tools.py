"""Tools that run on Anthropic's side: web search, web fetch and the user's MCP servers.

Their definitions are the installed `anthropic` package's (2.14.0): `WebSearchTool20260318Param`
and `WebFetchTool20260318Param` in `anthropic/types/`, and for the MCP connector
`BetaRequestMCPServerURLDefinitionParam` (`mcp_servers`) plus one `BetaMCPToolsetParam`
(`{"type": "mcp_toolset"}` in `tools`) per server, under the beta header MCP_BETA.

The model calls them inside a model request; their `server_tool_use` / `mcp_tool_use` and
result blocks come back in the reply and must be sent back unchanged in later requests.
A server tool cannot wait for an approval mid-call (it has run by the time we see it), so
`ask` is asked once per message, before the first model call: approved, the tool is declared
for that message; declined, it is left out. `deny` never declares it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.services.user_settings import UserSettings, WebToolOptions

WEB_SEARCH_TYPE = "web_search_20260318"
WEB_FETCH_TYPE = "web_fetch_20260318"
# The newest MCP connector beta the installed SDK's AnthropicBetaParam lists.
MCP_BETA = "mcp-client-2026-09-15"

# Blocks the API produces and runs itself: shown as tool calls with `server: true`.
SERVER_USE_TYPES = ("server_tool_use", "mcp_tool_use")
SERVER_RESULT_TYPES = ("web_search_tool_result", "web_fetch_tool_result", "mcp_tool_result")


@dataclass(frozen=True)
class ServerTools:
    """What one request adds for server tools: `tools` entries, `mcp_servers`, beta headers."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    mcp_servers: list[dict[str, Any]] = field(default_factory=list)
    betas: list[str] = field(default_factory=list)


# Asks the user whether a server tool may be used for this message: (name, what to show) -> yes?
Approve = Callable[[str, dict[str, Any]], bool]


def server_tools(prefs: UserSettings, approve: Approve | None = None) -> ServerTools:
    """The server tools `prefs` turn on, minus those its permissions deny and, for `ask`, those
    `approve` does not approve (all of them without `approve`)."""
    asked: dict[str, bool] = {}

    def allowed(name: str, shown: dict[str, Any]) -> bool:
        mode = prefs.permissions.get(name, "allow")
        if mode == "ask" and name not in asked:
            asked[name] = approve(name, shown) if approve is not None else False
        return mode == "allow" or (mode == "ask" and asked[name])

    tools: list[dict[str, Any]] = []
    for name, kind, setting in (("web_search", WEB_SEARCH_TYPE, prefs.web_search), ("web_fetch", WEB_FETCH_TYPE, prefs.web_fetch)):
        if setting is False:
            continue
        domains = setting.allowed_domains if isinstance(setting, WebToolOptions) else None
        if not allowed(name, {"tool": name, "scope": "this message", "allowedDomains": domains or "any"}):
            continue
        tool: dict[str, Any] = {"type": kind, "name": name}
        if domains:
            tool["allowed_domains"] = list(domains)
        tools.append(tool)
    servers: list[dict[str, Any]] = []
    for server in prefs.mcp_servers:
        shown = {"mcpServer": server.name, "url": server.url, "scope": "this message", "allowedTools": server.allowed_tools or "all"}
        if not allowed(server.name, shown):
            continue
        definition: dict[str, Any] = {"type": "url", "url": server.url, "name": server.name}
        if server.authorization_token:
            definition["authorization_token"] = server.authorization_token
        servers.append(definition)
        toolset: dict[str, Any] = {"type": "mcp_toolset", "mcp_server_name": server.name}
        if server.allowed_tools is not None:
            # Only the listed tools: everything off by default, each listed one on.
            toolset["default_config"] = {"enabled": False}
            toolset["configs"] = {name: {"enabled": True} for name in server.allowed_tools}
        tools.append(toolset)
    return ServerTools(tools=tools, mcp_servers=servers, betas=[MCP_BETA] if servers else [])


def server_block_events(block: dict[str, Any]) -> dict[str, Any] | None:
    """The `tool_use` / `tool_result` event (with `server: true`) for one reply block, if it is a
    server tool's; None for any other block."""
    kind = block.get("type")
    if kind in SERVER_USE_TYPES:
        event = {"event": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": block.get("input") or {},
                 "server": True}
        if kind == "mcp_tool_use":
            event["serverName"] = block.get("server_name")
        return event
    if kind in SERVER_RESULT_TYPES:
        return {"event": "tool_result", "tool_use_id": block.get("tool_use_id"), "content": block.get("content"),
                "is_error": bool(block.get("is_error")) or _is_error_content(block.get("content")), "server": True,
                "type": kind}
    return None


def _is_error_content(content: Any) -> bool:
    # Web tools report failures as a content object whose type ends in `_error`.
    return isinstance(content, dict) and str(content.get("type", "")).endswith("_error")
