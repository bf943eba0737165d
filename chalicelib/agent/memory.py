"""What the agent keeps between messages of a session, in the session state.

The stored conversation keeps every message the user saw; the model gets the *working context*:
a summary of what was compacted plus the stored messages from `kept_from` on. It is recorded as
an offset into the stored conversation rather than a copy, so it costs a few hundred bytes of
state however long the conversation grows.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from chalicelib.services.models import ApiModel
from chalicelib.services.skill_index import SkillIndex

SUMMARY_INTRO = (
    "[Earlier messages of this conversation were compacted to stay within the context window. "
    "Summary of them:]\n"
)


class WorkingContext(ApiModel):
    """Summary + the stored messages from `kept_from` on: what the model is sent."""

    conversation_id: str
    summary: str | None = None
    kept_from: int = 0
    # sha256 of stored message `kept_from - 1`: a conversation cleared or replaced since no
    # longer matches, and the context starts over.
    anchor: str | None = None
    # Thinking blocks of stored messages before this index are left out: their signatures bind
    # them to a prefix (system prompt, model, earlier messages) that has since changed.
    thinking_from: int = 0
    compactions: int = 0

    def valid_for(self, conversation_id: str, stored: list[dict[str, Any]]) -> bool:
        """Whether this context still describes `stored` (same conversation, same messages)."""
        if conversation_id != self.conversation_id or len(stored) < max(self.kept_from, self.thinking_from):
            return False
        return self.kept_from == 0 or message_sha256(stored[self.kept_from - 1]) == self.anchor


class AgentMemory(ApiModel):
    """The agent's part of the session state."""

    skill_index: SkillIndex | None = None
    context: WorkingContext | None = None


def message_sha256(message: dict[str, Any]) -> str:
    """A stable digest of one stored message."""
    return hashlib.sha256(json.dumps(message, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def working_messages(stored: list[dict[str, Any]], context: WorkingContext | None) -> list[dict[str, Any]]:
    """The messages to send: the summary (as the first user message), then the kept messages,
    without the thinking blocks whose prefix changed. Never splits a tool_use from its result:
    `kept_from` is only ever put before a user prompt or an assistant message."""
    if context is None:
        return list(stored)
    out: list[dict[str, Any]] = []
    if context.summary:
        out.append({"role": "user", "content": [{"type": "text", "text": SUMMARY_INTRO + context.summary}]})
    for index in range(context.kept_from, len(stored)):
        message = stored[index]
        if index < context.thinking_from and message.get("role") == "assistant" and isinstance(message.get("content"), list):
            content = [b for b in message["content"] if b.get("type") not in ("thinking", "redacted_thinking")]
            if not content:
                continue
            message = {**message, "content": content}
        out.append(message)
    return out
