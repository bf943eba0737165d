"""What a `start` may change for its session, on top of the user's settings.

The original passed `start`'s options to the Agent SDK. Where this server has the feature, the
same option names apply for the session: a system prompt, a per-message budget, and which tools
may run (the SDK's `allowedTools` / `disallowedTools`, in this server's tool names). The user's
settings are the operator's word, so options only add to them: a system prompt comes after the
settings' one, a budget can be lowered, not raised, and a tool the settings deny or ask for stays
denied or asked for.
"""

from __future__ import annotations

from pydantic import Field

from chalicelib.services.models import ApiModel
from chalicelib.services.user_settings import SANDBOX_TOOLS, WEB_TOOLS, UserSettings

#: The Agent SDK's tool names → this server's tools (names of ours are taken as they are).
SDK_TOOLS: dict[str, str] = {
    "Bash": "bash", "BashOutput": "bash", "KillBash": "bash", "KillShell": "bash", "Glob": "bash", "Grep": "bash",
    "Read": "str_replace_based_edit_tool", "Write": "str_replace_based_edit_tool", "Edit": "str_replace_based_edit_tool",
    "MultiEdit": "str_replace_based_edit_tool", "NotebookEdit": "str_replace_based_edit_tool",
    "WebSearch": "web_search", "WebFetch": "web_fetch",
}
TOOLS = SANDBOX_TOOLS + WEB_TOOLS


def our_tools(names: list[str]) -> set[str]:
    """This server's tools named by `names` (SDK names or ours; others name nothing here)."""
    return {SDK_TOOLS.get(name, name) for name in names} & set(TOOLS)


class SessionOptions(ApiModel):
    """The options of the session's last `start` that apply here."""

    system_prompt: str | None = Field(default=None, max_length=20_000)
    max_budget_usd: float | None = Field(default=None, gt=0, le=10_000)
    denied_tools: list[str] = Field(default_factory=list)

    @classmethod
    def from_start(cls, system_prompt: str | None, max_budget_usd: float | None, allowed_tools: list[str] | None,
                   disallowed_tools: list[str] | None) -> SessionOptions | None:
        """From `start`'s options: `allowedTools` lists what may run (every other tool of ours is
        denied), `disallowedTools` what may not. None when nothing applies."""
        denied = our_tools(disallowed_tools or [])
        if allowed_tools is not None:
            denied |= set(TOOLS) - our_tools(allowed_tools)
        if system_prompt is None and max_budget_usd is None and not denied:
            return None
        return cls(system_prompt=system_prompt, max_budget_usd=max_budget_usd, denied_tools=sorted(denied))

    def apply(self, prefs: UserSettings) -> UserSettings:
        """The user's settings as this session runs them."""
        budgets = [b for b in (prefs.max_budget_usd, self.max_budget_usd) if b is not None]
        permissions = {**prefs.permissions, **{tool: "deny" for tool in self.denied_tools}}
        # The settings' instructions stay first: a client adds to them, never replaces them.
        prompts = [p for p in (prefs.system_prompt, self.system_prompt) if p]
        return prefs.model_copy(update={
            "system_prompt": "\n\n".join(prompts) if prompts else None,
            "max_budget_usd": min(budgets) if budgets else None,
            "permissions": permissions,
        })
