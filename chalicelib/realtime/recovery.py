"""Repairing a conversation whose turn was cut off (runner killed, storage lost mid-turn).

The Messages API rejects a history in which an assistant `tool_use` is not answered by a
`tool_result` in the next user message, so one such block would fail every later turn of
the conversation. A cut-off turn's unanswered calls get an `is_error` result saying so.
"""

from __future__ import annotations

from typing import Any

CUT_OFF_RESULT = (
    "The turn was cut off before this tool call finished (the server running it stopped or lost "
    "its storage); its result is unknown. Check the workspace before relying on its effects."
)


def unanswered_tool_uses(messages: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """(index of the last assistant message, ids of its tool_use blocks the next message does
    not answer); (-1, []) when there is none."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "assistant":
            continue
        content = message.get("content")
        calls = [b["id"] for b in content if isinstance(b, dict) and b.get("type") == "tool_use" and "id" in b] if isinstance(content, list) else []
        following = messages[index + 1] if index + 1 < len(messages) else None
        answered = {
            b.get("tool_use_id")
            for b in (following or {}).get("content") or []
            if following is not None and following.get("role") == "user" and isinstance(b, dict) and b.get("type") == "tool_result"
        }
        return index, [c for c in calls if c not in answered]
    return -1, []


def answer_cut_off_calls(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(messages with an is_error result for every unanswered call, the result blocks added).

    The results go into the message right after the calls, ahead of any text there, as the
    API requires."""
    index, missing = unanswered_tool_uses(messages)
    if not missing:
        return messages, []
    results = [{"type": "tool_result", "tool_use_id": call, "content": CUT_OFF_RESULT, "is_error": True} for call in missing]
    repaired = list(messages)
    following = repaired[index + 1] if index + 1 < len(repaired) else None
    if following is not None and following.get("role") == "user":
        content = following.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        saved = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        others = [b for b in blocks if not (isinstance(b, dict) and b.get("type") == "tool_result")]
        repaired[index + 1] = {**following, "content": [*saved, *results, *others]}
    else:
        repaired.insert(index + 1, {"role": "user", "content": results})
    return repaired, results
