"""Which tool calls the agent may make alone, and what the model is told when it may not.

The user's `permissions` setting maps a tool to `allow`, `ask` or `deny` (unlisted: allow).
For `ask` the gate calls `ask_user`, which the turn runner provides: it asks the client and
waits on the session state (so it works when the turn runs in its own Lambda). Whatever the
answer, the model gets a tool_result it can act on; nothing here raises into the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from chalicelib.services.models import ApiModel

Decision = Literal["allow", "deny"]
AnswerReason = Literal["user", "remembered", "timeout", "interrupted", "unavailable"]


class PermissionAnswer(BaseModel):
    """How a permission request ended."""

    decision: Decision
    reason: AnswerReason = "user"


class PendingPermission(ApiModel):
    """A tool call waiting for the user, kept in the session state. `decision` is written by
    the websocket handler of the client's `permission` frame and read by the waiting runner."""

    tool_use_id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    turn_id: str
    asked_at: datetime
    decision: Decision | None = None
    remember: bool = False


AskUser = Callable[[str, str, dict[str, Any]], PermissionAnswer]


class ToolGate:
    """Applies the user's per-tool permissions to the client tools (bash, the editor)."""

    def __init__(self, modes: Mapping[str, str], ask_user: AskUser | None, timeout_seconds: float) -> None:
        self.modes = dict(modes)
        self.ask_user = ask_user
        self.timeout_seconds = timeout_seconds

    def refusal(self, tool_use_id: str, name: str, tool_input: dict[str, Any]) -> str | None:
        """None when the call may run; otherwise the is_error text for the model."""
        mode = self.modes.get(name, "allow")
        if mode == "allow":
            return None
        if mode == "deny":
            return (f"The user's settings do not allow the {name} tool (permissions: deny), so this call was not run. "
                    "Do not retry it; tell the user what you wanted to do and why.")
        if self.ask_user is None:
            return f"The {name} tool needs the user's approval and no client can be asked now, so this call was not run."
        answer = self.ask_user(tool_use_id, name, tool_input)
        if answer.decision == "allow":
            return None
        if answer.reason == "timeout":
            return (f"The user did not answer the request to run this {name} call within {self.timeout_seconds:g} s, "
                    "so it was declined and not run. Ask the user before trying it again.")
        if answer.reason == "interrupted":
            return "Interrupted by the user before this ran."
        return (f"The user declined this {name} call, so it was not run. Do not retry it unless they ask; "
                "ask them how they want to proceed instead.")
