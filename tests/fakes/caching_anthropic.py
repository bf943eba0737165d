"""A Messages API stand-in that caches prompts as the real API documents, and bills like it.

Prompt caching (platform.claude.com/docs/en/build-with-claude/prompt-caching):
- the prefix is tools -> system -> messages, block by block; a block marked with
  `cache_control` is a breakpoint (at most 4 per request; thinking blocks cannot be marked);
- at each breakpoint the cache is looked up at that block and up to 20 blocks before it; the
  longest exact-prefix hit is read;
- everything from the hit to the last breakpoint is written, if that prefix reaches the
  minimum cacheable length (1,024 tokens here); entries live 5 minutes from their last use.

Tokens are estimated as characters of JSON / 4 (per block for billing; for the whole request
for the `prompt is too long` limit). Usage reports `input_tokens` (after the last breakpoint or
uncached), `cache_read_input_tokens` and `cache_creation_input_tokens`, as the API does.

Preserved thinking (platform.claude.com/docs/en/build-with-claude/preserved-thinking): on the
models that bind thinking, a thinking or redacted_thinking block replayed after anything before
it changed (system prompt, tools, model, earlier messages) is refused with the API's 400.

It also answers the agent's summarising calls itself (recognised by their system prompt), so a
test scripts only the conversation's replies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalicelib.agent.compaction import SUMMARY_SYSTEM
from tests.fakes.fake_anthropic import (
    FakeAnthropic,
    HttpError,
    RedactedThinking,
    Reply,
    Response,
    Text,
    Thinking,
    ToolUse,
)

LOOKBACK = 20
MAX_BREAKPOINTS = 4
# Models whose thinking blocks are bound to the conversation prefix that produced them.
BINDING_MODELS = frozenset({
    "claude-fable-5-2", "claude-mythos-5-2", "claude-fable-5-1", "claude-mythos-5-1",
    "claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5",
})


class CacheRequestError(Exception):
    """A request the API would refuse (400) for its cache_control marks."""


@dataclass(frozen=True)
class Bill:
    """How one request's prompt was billed."""

    input_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens

    def billed(self, read: float = 0.1, write: float = 1.25) -> float:
        """Input cost in units of the plain input price."""
        return self.input_tokens + read * self.cache_read_input_tokens + write * self.cache_creation_input_tokens


def request_tokens(body: dict[str, Any]) -> int:
    """The `prompt is too long` estimate: characters of the request's JSON / 4."""
    return len(json.dumps(body)) // 4


def _blocks(body: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """(block without cache_control, marked) for every block of the prefix, in order."""
    out: list[tuple[dict[str, Any], bool]] = []

    def add(block: dict[str, Any], scope: str) -> None:
        marked = "cache_control" in block
        if marked and block.get("type") in ("thinking", "redacted_thinking"):
            raise CacheRequestError(f"{scope}: cache_control cannot be set on a {block['type']} block.")
        out.append(({"scope": scope, **{k: v for k, v in block.items() if k != "cache_control"}}, marked))

    for tool in body.get("tools") or []:
        add(tool, "tools")
    system = body.get("system")
    for block in ([{"type": "text", "text": system}] if isinstance(system, str) else system or []):
        add(block, "system")
    for index, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            add(block, f"messages.{index}.{message.get('role')}")
    if body.get("cache_control") and out:  # automatic caching: the last cacheable block
        out[-1] = (out[-1][0], True)
    return out


class PromptCache:
    """Exact-prefix cache entries with a 5-minute life, looked up and written per the docs."""

    def __init__(self, min_tokens: int = 1024, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_tokens = min_tokens
        self.ttl = ttl
        self.clock = clock
        self.entries: dict[str, float] = {}
        self.lock = threading.Lock()

    def bill(self, body: dict[str, Any], *, store: bool = True) -> Bill:
        """Bill one request (and, with `store`, update the cache as the API would)."""
        blocks = _blocks(body)
        marks = [i for i, (_, marked) in enumerate(blocks) if marked]
        if len(marks) > MAX_BREAKPOINTS:
            raise CacheRequestError(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(marks)}.")
        digests: list[str] = []
        totals: list[int] = []
        running = hashlib.sha256()
        total = 0
        for block, _ in blocks:
            text = json.dumps(block, sort_keys=True, separators=(",", ":"))
            running.update(text.encode())
            digests.append(running.copy().hexdigest())
            total += max(1, len(text) // 4)
            totals.append(total)
        now = self.clock()
        with self.lock:
            live = {d for d, expiry in self.entries.items() if expiry > now}
            read_end = 0  # blocks [0, read_end) come from the cache
            for mark in marks:
                for j in range(mark, max(-1, mark - LOOKBACK - 1), -1):
                    if digests[j] in live:
                        read_end = max(read_end, j + 1)
                        break
            read = totals[read_end - 1] if read_end else 0
            write = 0
            if marks and marks[-1] + 1 > read_end and totals[marks[-1]] >= self.min_tokens:
                write = totals[marks[-1]] - read
            if store:
                if read_end:
                    self.entries[digests[read_end - 1]] = now + self.ttl
                for mark in marks:
                    if totals[mark] >= self.min_tokens:
                        self.entries[digests[mark]] = now + self.ttl
        return Bill(input_tokens=(totals[-1] if totals else 0) - read - write, cache_read_input_tokens=read,
                    cache_creation_input_tokens=write)


def strip_marks(body: dict[str, Any], *, keep_system: bool = False) -> dict[str, Any]:
    """`body` without cache_control marks (or with only the system prompt's): other strategies."""

    def clean(block: Any, keep: bool) -> Any:
        if isinstance(block, dict) and "cache_control" in block and not keep:
            return {k: v for k, v in block.items() if k != "cache_control"}
        return block

    out = dict(body)
    if isinstance(body.get("system"), list):
        out["system"] = [clean(b, keep_system) for b in body["system"]]
    out["messages"] = [
        {**m, "content": [clean(b, False) for b in m["content"]]} if isinstance(m.get("content"), list) else m
        for m in body.get("messages") or []
    ]
    return out


class CachingAnthropic(FakeAnthropic):
    """FakeAnthropic whose replies carry the usage the cache above produces.

    `limit_tokens`: answer 400 `prompt is too long` past it (estimate: request JSON chars / 4).
    """

    def __init__(self, *, limit_tokens: int | None = None, min_tokens: int = 1024) -> None:
        super().__init__()
        self.cache = PromptCache(min_tokens)
        self.limit_tokens = limit_tokens
        self.bills: list[Bill] = []
        self.conversation_requests: list[dict[str, Any]] = []
        self.summary_requests: list[dict[str, Any]] = []
        self.refused_too_long = 0
        self.refused_binding = 0
        self.bound: dict[str, str] = {}  # thinking signature (or redacted data) -> prefix digest

    def _binding_error(self, body: dict[str, Any]) -> str | None:
        if body.get("model") not in BINDING_MODELS:
            return None
        messages = body.get("messages") or []
        for i, message in enumerate(messages):
            content = message.get("content")
            if message.get("role") != "assistant" or not isinstance(content, list):
                continue
            for j, block in enumerate(content):
                key = block.get("signature") or block.get("data") if block.get("type") in ("thinking", "redacted_thinking") else None
                if key in self.bound and self.bound[key] != _prefix_digest(body, messages[:i], content[:j]):
                    return (f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block. The block is bound to a "
                            "different conversation. Remove the block, or set "
                            "`thinking.block_binding.prefix_mismatch_behavior` to \"drop_block\".")
        return None

    def _bind(self, body: dict[str, Any], reply: Reply) -> None:
        earlier: list[dict[str, Any]] = []
        for block in reply.blocks:
            if isinstance(block, Thinking):
                self.bound[block.signature] = _prefix_digest(body, body.get("messages") or [], earlier)
                earlier.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
            elif isinstance(block, RedactedThinking):
                self.bound[block.data] = _prefix_digest(body, body.get("messages") or [], earlier)
                earlier.append({"type": "redacted_thinking", "data": block.data})
            elif isinstance(block, ToolUse):
                earlier.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
            else:
                earlier.append({"type": "text", "text": block.text})

    def _next(self, body: dict[str, Any]) -> Response:
        size = request_tokens(body)
        if self.limit_tokens is not None and size > self.limit_tokens:
            with self.lock:
                self.refused_too_long += 1
            return HttpError(400, "invalid_request_error", f"prompt is too long: {size} tokens > {self.limit_tokens} maximum")
        try:
            bill = self.cache.bill(body)
        except CacheRequestError as exc:
            return HttpError(400, "invalid_request_error", str(exc))
        refusal = self._binding_error(body)
        if refusal is not None:
            with self.lock:
                self.refused_binding += 1
            return HttpError(400, "invalid_request_error", refusal)
        if body.get("system") == SUMMARY_SYSTEM:
            with self.lock:
                self.summary_requests.append(body)
                number = len(self.summary_requests)
            response: Response = Reply([Text(f"SUMMARY-{number}: {_gist(body)}")])
        else:
            with self.lock:
                self.conversation_requests.append(body)
            response = super()._next(body)
        if isinstance(response, Reply):
            with self.lock:
                self.bills.append(bill)
                self._bind(body, response)
            response = dataclasses.replace(response, input_tokens=bill.input_tokens, cache_read_input_tokens=bill.cache_read_input_tokens,
                                           cache_creation_input_tokens=bill.cache_creation_input_tokens)
        return response


def _gist(body: dict[str, Any]) -> str:
    """A short, deterministic 'summary': the user lines of the transcript it was given."""
    text = body["messages"][-1]["content"]
    users = [line for line in str(text).splitlines() if line.startswith("User: ")]
    return " | ".join(users)[:1500] or "nothing to keep"


def _unmarked(blocks: Any) -> Any:
    """Content as a list of blocks without cache_control (a string is one text block)."""
    if isinstance(blocks, str):
        return [{"type": "text", "text": blocks}]
    return [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks or []]


def _prefix_digest(body: dict[str, Any], messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> str:
    """What a thinking block is bound to: model, tools, system, and everything before it."""
    prefix = {
        "model": body.get("model"), "tools": body.get("tools"), "system": _unmarked(body.get("system")),
        "messages": [{"role": m.get("role"), "content": _unmarked(m.get("content"))} for m in messages],
        "blocks": _unmarked(blocks),
    }
    return hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
