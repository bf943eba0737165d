"""Compaction: keep the working context inside the context window with a summarising model call.

Before a call whose request would pass COMPACT_AT of the window, the older part of the working
context is summarised (folding in the previous summary) and the model continues from summary +
the most recent exchanges. It runs in the loop, so it works against any Messages API endpoint.
A cut goes only before a user prompt or before an assistant message, never between a tool_use
and its tool_result.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chalicelib.agent.memory import WorkingContext, message_sha256

COMPACT_AT = 0.8
# After compaction the kept messages may use this share of the window (the summary and the
# system prompt come on top); when even the newest exchange is bigger, it is kept alone.
KEEP_SHARE = 0.5
# One summarising request may carry this share of the window of transcript.
CHUNK_SHARE = 0.5
BLOCK_CHARS = 2_000  # a tool input or result is cut to this in the transcript
SUMMARY_MAX_TOKENS = 4_096

SUMMARY_SYSTEM = (
    "You compact the transcript of a conversation between a user and an AI agent that works in a "
    "sandboxed Linux workspace, so that the agent can continue the conversation from your summary "
    "alone. Keep: what the user asked for and still wants, decisions and their reasons, facts "
    "learned (file paths, commands that worked or failed, values, errors), the state of the work "
    "and what remains to do. Drop pleasantries and output that no longer matters. Write plain "
    "prose and short lists, at most about 800 words."
)
_TOO_LONG = re.compile(r"prompt is too long:\s*(\d+)\s*tokens\s*>\s*(\d+)", re.IGNORECASE)


class TokenEstimator:
    """Tokens of a request from its JSON length, calibrated by each response's usage."""

    def __init__(self, chars_per_token: float = 3.5) -> None:
        self.chars_per_token = chars_per_token

    def chars(self, payload: Any) -> int:
        return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    def tokens(self, payload: Any) -> int:
        return self.tokens_of_chars(self.chars(payload))

    def tokens_of_chars(self, chars: int) -> int:
        """Tokens of a request whose JSON is `chars` long (its size measured once, used twice)."""
        return int(chars / self.chars_per_token) + 1

    def calibrate(self, request_chars: int, prompt_tokens: int) -> None:
        """Learn the ratio from a request whose real size the API reported."""
        if prompt_tokens > 500:
            self.chars_per_token = min(6.0, max(2.0, request_chars / prompt_tokens))


def prompt_too_long(message: str) -> tuple[int, int] | None:
    """(tokens, maximum) from the API's 400 "prompt is too long: N tokens > M maximum"."""
    found = _TOO_LONG.search(message)
    if found:
        return int(found.group(1)), int(found.group(2))
    return (0, 0) if "prompt is too long" in message.lower() else None


def is_cut_point(stored: list[dict[str, Any]], index: int) -> bool:
    """Whether the kept part may start at `stored[index]` without orphaning a tool_result."""
    message = stored[index]
    if message.get("role") == "assistant":
        return True
    content = message.get("content")
    return not (isinstance(content, list) and any(b.get("type") == "tool_result" for b in content))


def choose_cut(stored: list[dict[str, Any]], context: WorkingContext, keep_tokens: int, estimator: TokenEstimator) -> int | None:
    """The new `kept_from`: the earliest cut whose tail fits `keep_tokens`, else the latest cut.
    None when nothing older than the newest exchange is left to summarise."""
    candidates = [i for i in range(context.kept_from + 1, len(stored)) if is_cut_point(stored, i)]
    if not candidates:
        return None
    # The JSON of stored[i:] is "[" + its messages joined by "," + "]": sizes summed from the end,
    # each message serialised once (not the whole tail once per candidate).
    tail_chars = [0] * (len(stored) + 1)
    for i in range(len(stored) - 1, -1, -1):
        tail_chars[i] = tail_chars[i + 1] + estimator.chars(stored[i]) + 1
    for index in candidates:
        if estimator.tokens_of_chars(tail_chars[index] + 1) <= keep_tokens:
            return index
    return candidates[-1]


def render_transcript(messages: list[dict[str, Any]]) -> list[str]:
    """One plain-text entry per message; tool inputs and outputs cut to BLOCK_CHARS."""
    entries = []
    for message in messages:
        role = "User" if message.get("role") == "user" else "Agent"
        content = message.get("content")
        if isinstance(content, str):
            entries.append(f"{role}: {content}")
            continue
        lines = []
        for block in content or []:
            kind = block.get("type")
            if kind == "text":
                lines.append(f"{role}: {block.get('text', '')}")
            elif kind == "tool_use":
                lines.append(f"{role} used {block.get('name')}: {_cut(json.dumps(block.get('input'), ensure_ascii=False))}")
            elif kind == "tool_result":
                body = block.get("content")
                text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
                status = " (error)" if block.get("is_error") else ""
                lines.append(f"Tool result{status}: {_cut(text)}")
            elif kind in ("server_tool_use", "mcp_tool_use"):
                lines.append(f"{role} used {block.get('name')} (run by Anthropic): {_cut(json.dumps(block.get('input'), ensure_ascii=False))}")
            elif str(kind).endswith("_tool_result"):
                lines.append(f"{kind}: {_cut(json.dumps(block.get('content'), ensure_ascii=False))}")
        if lines:
            entries.append("\n".join(lines))
    return entries


def _cut(text: str) -> str:
    if len(text) <= BLOCK_CHARS:
        return text
    head, tail = text[: BLOCK_CHARS * 3 // 4], text[-BLOCK_CHARS // 4 :]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters left out ...]\n{tail}"


def chunks(entries: list[str], limit: int) -> list[str]:
    """`entries` joined into pieces of at most `limit` characters (an entry longer is cut)."""
    pieces: list[str] = []
    current = ""
    for entry in entries:
        entry = entry if len(entry) <= limit else _cut_to(entry, limit)
        if current and len(current) + len(entry) + 2 > limit:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{entry}" if current else entry
    if current:
        pieces.append(current)
    return pieces


def _cut_to(text: str, limit: int) -> str:
    keep = max(0, limit - 60)
    return text[: keep * 3 // 4] + "\n[... left out ...]\n" + text[-(keep // 4) :]


def summary_request(previous: str | None, transcript: str) -> list[dict[str, Any]]:
    """The messages of one summarising call."""
    parts = []
    if previous:
        parts.append(f"<previous_summary>\n{previous}\n</previous_summary>")
    parts.append(f"<transcript>\n{transcript}\n</transcript>")
    parts.append("Write the new summary of everything above (the previous summary included).")
    return [{"role": "user", "content": "\n\n".join(parts)}]


def compacted_context(context: WorkingContext, stored: list[dict[str, Any]], cut: int, summary: str, *,
                      binds_thinking: bool) -> WorkingContext:
    """`context` after summarising `stored[context.kept_from:cut]` into `summary`."""
    return context.model_copy(update={
        "summary": summary,
        "kept_from": cut,
        "anchor": message_sha256(stored[cut - 1]),
        # The kept messages now follow a different prefix (the summary): their thinking
        # signatures no longer verify on models that bind them.
        "thinking_from": len(stored) if binds_thinking else context.thinking_from,
        "compactions": context.compactions + 1,
    })
