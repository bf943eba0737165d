"""Per-user settings at `users/{userId}/settings/preferences.json`.

The agent reads `model`, `maxTurns`, `systemPrompt`, `thinking`, `allowNetwork` and `network` from here: these are
the user's (or the app's) choices, not the websocket client's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from chalicelib import safejson
from chalicelib.errors import BadRequest, Conflict, PreconditionFailed
from chalicelib.sandbox.egress_policy import MAX_RULES, normalize_rule
from chalicelib.services.limits import MAX_SETTINGS_BYTES
from chalicelib.services.models import ApiModel
from chalicelib.storage import ObjectNotFound, ObjectStore, layout
from chalicelib.storage import PreconditionFailed as StoragePreconditionFailed

#: A PATCH without If-Match re-reads and re-merges this many times before giving up (409).
PATCH_ATTEMPTS = 5
PATCH_BACKOFF_SECONDS = 0.02
# What GET /settings shows instead of an MCP server's token; sent back in a PUT/PATCH it keeps the stored one.
MASKED_TOKEN = "********"
MAX_TOKEN_CHARS = 4096
MAX_MCP_SERVERS = 10
SANDBOX_TOOLS = ("bash", "str_replace_based_edit_tool")
WEB_TOOLS = ("web_search", "web_fetch")
PermissionMode = Literal["allow", "ask", "deny"]


class WebToolOptions(ApiModel):
    """A web tool limited to some domains (`{"allowedDomains": ["example.com"]}`)."""

    allowed_domains: list[Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9*.-]+(/[^\s]*)?$")]] | None = Field(
        default=None, max_length=100
    )


class McpServer(ApiModel):
    """A remote MCP server the Messages API's MCP connector calls on the user's behalf."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    url: str = Field(max_length=2048)
    authorization_token: str | None = Field(default=None, min_length=1)
    allowed_tools: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(default=None, max_length=200)

    @field_validator("url")
    @classmethod
    def _https_only(cls, url: str) -> str:
        parsed = urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname or any(c.isspace() for c in url):
            raise ValueError("must be an https:// URL (the MCP connector only calls servers over https)")
        return url

    @field_validator("authorization_token")
    @classmethod
    def _token_size(cls, token: str | None) -> str | None:
        if token is not None and len(token) > MAX_TOKEN_CHARS:
            raise ValueError(f"is {len(token)} characters; an authorization token may have at most {MAX_TOKEN_CHARS}")
        return token


class NetworkRules(ApiModel):
    """Which hosts a network-on sandbox may reach: `pypi.org`, `*.githubusercontent.com` or an IP.

    A deny always wins; a non-empty allow list must match. Neither ever opens loopback, private
    networks or the host: the egress proxy refuses those for every rule.
    """

    allow: list[str] = Field(default_factory=list, max_length=MAX_RULES)
    deny: list[str] = Field(default_factory=list, max_length=MAX_RULES)

    @field_validator("allow", "deny")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        return [normalize_rule(rule) for rule in rules]


class UserSettings(ApiModel):
    """What a user can configure about their agent."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    # Strict: lax pydantic read "yes", 1 and "10" as true or 10, so a typo could open the network.
    max_turns: StrictInt | None = Field(default=None, ge=1, le=200)
    system_prompt: str | None = Field(default=None, max_length=20_000)
    allow_network: StrictBool = False
    network: NetworkRules | None = None
    # Extended thinking: "off", "adaptive", or a budget in tokens; unset: the model's default.
    thinking: Literal["off", "adaptive"] | Annotated[StrictInt, Field(ge=1024, le=128_000)] | None = None
    preferences: dict[str, Any] = Field(default_factory=dict)
    # Per tool (bash, str_replace_based_edit_tool, web_search, web_fetch, an MCP server's name):
    # allow, ask or deny. Unlisted tools are allowed. Server tools are asked for once per message.
    permissions: dict[str, PermissionMode] = Field(default_factory=dict)
    # USD one message may cost (model calls summed); the server's MAX_BUDGET_USD caps it too.
    max_budget_usd: float | None = Field(default=None, gt=0, le=10_000)
    web_search: StrictBool | WebToolOptions = False
    web_fetch: StrictBool | WebToolOptions = False
    mcp_servers: list[McpServer] = Field(default_factory=list, max_length=MAX_MCP_SERVERS)

    @model_validator(mode="after")
    def _tools_are_known(self) -> UserSettings:
        names = [server.name for server in self.mcp_servers]
        if len(set(names)) != len(names):
            raise ValueError("mcpServers: each server needs a unique name")
        clash = set(names) & set(SANDBOX_TOOLS + WEB_TOOLS)
        if clash:
            raise ValueError(f"mcpServers: {min(clash)!r} is a built-in tool's name; choose another server name")
        known = set(SANDBOX_TOOLS + WEB_TOOLS) | set(names)
        for tool, mode in self.permissions.items():
            if tool not in known:
                raise ValueError(
                    f"permissions: unknown tool {tool!r}; the keys are {', '.join(SANDBOX_TOOLS + WEB_TOOLS)} "
                    "or the name of one of your mcpServers"
                )
        return self

    def masked(self) -> UserSettings:
        """A copy safe to show: MCP tokens replaced by MASKED_TOKEN (they are write-only)."""
        servers = [s.model_copy(update={"authorization_token": MASKED_TOKEN}) if s.authorization_token else s for s in self.mcp_servers]
        return self.model_copy(update={"mcp_servers": servers})

    def __repr__(self) -> str:  # never print a token (e.g. in a traceback or a log line)
        return f"UserSettings({self.masked().model_dump(by_alias=True)!r})"

    __str__ = __repr__


class SettingsView(ApiModel):
    user_id: str
    settings: UserSettings
    updated: datetime | None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _validate(data: Any, stored: Callable[[], UserSettings] | None = None) -> UserSettings:
    if not isinstance(data, dict):
        raise BadRequest("Settings must be a JSON object.", code="invalid_body")
    data = _keep_masked_tokens(data, stored)
    try:
        return UserSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"Invalid settings: {problems}.", code="invalid_settings") from None


def _keep_masked_tokens(data: dict[str, Any], stored: Callable[[], UserSettings] | None) -> dict[str, Any]:
    """A client that read masked settings and sends them back keeps the stored tokens (read
    only then: a PUT without masked tokens costs no extra storage request)."""
    servers = data.get("mcpServers")
    if not isinstance(servers, list) or not any(isinstance(s, dict) and s.get("authorizationToken") == MASKED_TOKEN for s in servers):
        return data
    known = {s.name: s.authorization_token for s in (stored().mcp_servers if stored else [])}
    kept = []
    for server in servers:
        if isinstance(server, dict) and server.get("authorizationToken") == MASKED_TOKEN:
            token = known.get(str(server.get("name")))
            if token is None:
                raise BadRequest(
                    f"mcpServers: {server.get('name')!r} sends the masked token {MASKED_TOKEN!r} but no token is stored "
                    "under that name: send the real authorizationToken.", code="invalid_settings",
                )
            server = {**server, "authorizationToken": token}
        kept.append(server)
    return {**data, "mcpServers": kept}


class UserSettingsService:
    """Read, replace and merge a user's settings."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def get(self, user_id: str) -> UserSettings:
        """The stored settings, or the defaults (an unreadable file also gives the defaults)."""
        return self._read(user_id)[0]

    def view(self, user_id: str) -> tuple[SettingsView, str | None]:
        settings, etag, updated = self._read(user_id)
        return SettingsView(user_id=user_id, settings=settings.masked(), updated=updated), etag

    def replace(self, user_id: str, data: Any, if_match: str | None, if_none_match: bool) -> tuple[SettingsView, str]:
        """PUT: validate and store the whole document."""
        return self._write(user_id, _validate(data, lambda: self.get(user_id)), if_match, if_none_match)

    def patch(self, user_id: str, patch: Any, if_match: str | None) -> tuple[SettingsView, str]:
        """PATCH: merge into what is stored; guarded by the ETag we read, so concurrent
        PATCHes cannot silently drop each other's changes.

        Without If-Match the client asked for no condition, so losing the race to another
        writer is ours to handle: read, merge and write again (bounded, with jitter), rather
        than answer 412 for a precondition the client never set.
        """
        if not isinstance(patch, dict):
            raise BadRequest("A settings PATCH must be a JSON object (a JSON merge patch).", code="invalid_body")
        attempts = 1 if if_match is not None else PATCH_ATTEMPTS
        for attempt in range(attempts):
            current, etag, _ = self._read(user_id)
            merged = merge_patch(current.model_dump(by_alias=True, mode="json"), patch)
            settings = _validate(merged, lambda: current)
            try:
                return self._write(user_id, settings, if_match or etag, if_none_match=etag is None and if_match is None)
            except PreconditionFailed:
                if if_match is not None:
                    raise
                if attempt + 1 < attempts:
                    time.sleep(random.uniform(0, PATCH_BACKOFF_SECONDS * 2**attempt))
        raise Conflict(
            f"The settings kept changing under this PATCH ({attempts} attempts lost to other writers): retry shortly.",
            code="concurrent_update",
        )

    def _read(self, user_id: str) -> tuple[UserSettings, str | None, datetime | None]:
        try:
            obj = self.store.get(layout.settings_key(user_id))
        except ObjectNotFound:
            return UserSettings(), None, None
        try:
            return UserSettings.model_validate(safejson.loads(obj.body)), obj.info.etag, obj.info.last_modified
        except (ValueError, ValidationError):
            return UserSettings(), obj.info.etag, obj.info.last_modified

    def _write(self, user_id: str, settings: UserSettings, if_match: str | None, if_none_match: bool) -> tuple[SettingsView, str]:
        data = settings.model_dump_json(by_alias=True).encode()
        if len(data) > MAX_SETTINGS_BYTES:
            raise BadRequest(f"Settings are limited to {MAX_SETTINGS_BYTES} bytes.", code="settings_too_large")
        try:
            info = self.store.put(
                layout.settings_key(user_id), data, content_type="application/json",
                if_match=if_match, if_none_match=if_none_match,
            )
        except (StoragePreconditionFailed, ObjectNotFound):
            raise PreconditionFailed(
                "The settings changed since you read them (or already exist, with If-None-Match: *). "
                "GET them for the current ETag and retry."
            ) from None
        return SettingsView(user_id=user_id, settings=settings.masked(), updated=info.last_modified), info.etag
