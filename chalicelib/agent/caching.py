"""Prompt-cache breakpoints for one request.

The cache matches exact prefixes, in the order tools -> system -> messages, at blocks marked
with `cache_control`; a lookup checks the marked block and the 20 blocks before it; at most 4
marks per request. So:

1. the end of the system prompt (tools + system: the same for every call of a session);
2. the newest message (this call writes the prefix the next call reads);
3. the user message before it: where the previous call wrote, so the read hits even when the
   reply in between added more than 20 blocks (parallel tool calls).

Marks go on copies: the stored conversation never holds them. Thinking blocks cannot be marked,
so a mark goes on the last block that can hold one.
"""

from __future__ import annotations

import copy
from typing import Any

EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
_UNMARKABLE = ("thinking", "redacted_thinking")


def with_breakpoints(system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system, messages) to send, with at most three cache breakpoints."""
    marked_system = [dict(b) for b in system]
    if marked_system:
        marked_system[-1]["cache_control"] = EPHEMERAL
    marked = list(messages)
    targets = []
    if marked:
        targets.append(len(marked) - 1)
        earlier_users = [i for i in range(len(marked) - 1) if marked[i].get("role") == "user"]
        if earlier_users:
            targets.append(earlier_users[-1])
    for index in targets:
        marked[index] = _mark_last_block(marked[index])
    return marked_system, marked


def _mark_last_block(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            return message
        return {**message, "content": [{"type": "text", "text": content, "cache_control": EPHEMERAL}]}
    blocks = list(content or [])
    for i in range(len(blocks) - 1, -1, -1):
        block = blocks[i]
        if block.get("type") in _UNMARKABLE or (block.get("type") == "text" and not block.get("text")):
            continue
        blocks[i] = {**copy.copy(block), "cache_control": EPHEMERAL}
        return {**message, "content": blocks}
    return message
