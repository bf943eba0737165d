"""The agent loop on the streaming Messages API.

One call of `run_turn` answers one user prompt: stream a reply, run the tools it asks for in
the sandbox, send the results back, and repeat until the model stops, `max_turns` replies
have been made, or the user interrupts. Every complete message is handed to
`on_messages_changed` at once, so a crash, a disconnect or an interrupt loses nothing that was
said.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic

from chalicelib.agent.pricing import PriceTable, Usage
from chalicelib.agent.tools import TOOLS, run_tool
from chalicelib.sandbox.base import Sandbox

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Any]
MID_STREAM_RETRIES = 3


@dataclass
class TurnResult:
    """How a turn ended."""

    turns: int = 0
    duration_ms: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    stop_reason: str = "end_turn"
    interrupted: bool = False
    error_code: str | None = None


class _Interrupted(Exception):
    pass


def run_turn(
    *,
    client: anthropic.Anthropic,
    model: str,
    system: str,
    history: list[dict[str, Any]],
    prompt: str,
    prompt_id: str,
    max_turns: int,
    max_tokens: int,
    sandbox: Sandbox,
    prices: PriceTable,
    emit: Emit,
    should_stop: Callable[[], bool],
    on_messages_changed: Callable[[list[dict[str, Any]]], None],
    retry_backoff: float = 0.5,
) -> TurnResult:
    """Answer `prompt`; emit stream/message/tool_use/tool_result/result (or error) events."""
    started = time.monotonic()
    result = TurnResult()
    messages = list(history)
    user_message = {"role": "user", "content": prompt}
    messages.append(user_message)
    emit({"event": "message", "role": "user", "content": prompt, "uuid": prompt_id})
    on_messages_changed(messages)
    try:
        while True:
            if should_stop():
                raise _Interrupted
            if result.turns >= max_turns:
                result.stop_reason = "max_turns"
                emit({"event": "status", "status": "max_turns_reached", "maxTurns": max_turns,
                      "message": f"Stopped after {max_turns} model replies (maxTurns). Send another message to continue."})
                break
            result.turns += 1
            reply = _stream_reply(client, model, system, messages, max_tokens, emit, should_stop, result, retry_backoff)
            content = [_block(b) for b in reply.content]
            messages.append({"role": "assistant", "content": content})
            emit({"event": "message", "role": "assistant", "content": content, "uuid": reply.id})
            on_messages_changed(messages)
            if reply.stop_reason != "tool_use":
                result.stop_reason = reply.stop_reason or "end_turn"
                break
            results = []
            for block in reply.content:
                if block.type != "tool_use":
                    continue
                emit({"event": "tool_use", "id": block.id, "name": block.name, "input": block.input})
                if should_stop():
                    outcome = {"type": "tool_result", "tool_use_id": block.id, "content": "Interrupted by the user before this ran.", "is_error": True}
                else:
                    outcome = run_tool(sandbox, block.id, block.name, dict(block.input or {})).to_block()
                emit({"event": "tool_result", "tool_use_id": block.id, "content": outcome["content"], "is_error": outcome.get("is_error", False)})
                results.append(outcome)
            messages.append({"role": "user", "content": results})
            emit({"event": "message", "role": "user", "content": results, "uuid": uuid.uuid4().hex})
            on_messages_changed(messages)
    except _Interrupted:
        result.interrupted = True
        result.stop_reason = "interrupted"
        on_messages_changed(messages)  # keeps the partial reply _keep_partial added
    except anthropic.APIError as exc:
        code, message = describe_model_error(exc)
        result.error_code = code
        result.stop_reason = "error"
        emit({"event": "error", "code": code, "message": message})
    result.duration_ms = int((time.monotonic() - started) * 1000)
    result.cost_usd = prices.cost(model, result.usage)
    emit({
        "event": "result", "turns": result.turns, "durationMs": result.duration_ms, "usage": result.usage.to_wire(),
        "costUsd": result.cost_usd, "model": model, "stopReason": result.stop_reason, "interrupted": result.interrupted,
    })
    return result


def _stream_reply(client: anthropic.Anthropic, model: str, system: str, messages: list[dict[str, Any]], max_tokens: int,
                  emit: Emit, should_stop: Callable[[], bool], result: TurnResult, backoff: float) -> Any:
    """One model reply, streamed. Retries a mid-stream overloaded error (which the SDK does
    not) from scratch, telling the client to discard the partial text first."""
    for attempt in range(MID_STREAM_RETRIES + 1):
        streamed: list[str] = []
        try:
            with client.messages.stream(model=model, max_tokens=max_tokens, system=system or anthropic.NOT_GIVEN,
                                        messages=_normalised(messages), tools=TOOLS) as stream:
                with _CloseOnStop(stream, should_stop) as watcher:
                    try:
                        for event in stream:
                            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                                streamed.append(event.delta.text)
                                emit({"event": "stream", "type": "text", "content": event.delta.text})
                            if should_stop():
                                raise _Interrupted
                        reply = stream.get_final_message()
                    except Exception:
                        if watcher.closed or should_stop():
                            raise _Interrupted from None
                        raise
            result.usage.add(reply.usage)
            return reply
        except _Interrupted:
            _keep_partial(streamed, messages, emit)
            raise
        except anthropic.APIStatusError as exc:
            if not _mid_stream_overload(exc) or attempt == MID_STREAM_RETRIES:
                raise
            log.warning("mid-stream overload (attempt %d), retrying the reply", attempt + 1)
            emit({"event": "status", "status": "retrying", "reason": "overloaded", "discardStreamed": len("".join(streamed)),
                  "message": "The model was overloaded mid-reply; discard the partial text, it is being regenerated."})
            time.sleep(backoff * (2**attempt))
    raise AssertionError("unreachable")


def _keep_partial(streamed: list[str], messages: list[dict[str, Any]], emit: Emit) -> None:
    """An interrupted reply keeps what was said (text only: a half-made tool call cannot be
    answered, and would make the history invalid for the next call)."""
    text = "".join(streamed)
    if text.strip():
        content = [{"type": "text", "text": text}]
        messages.append({"role": "assistant", "content": content})
        emit({"event": "message", "role": "assistant", "content": content, "uuid": uuid.uuid4().hex, "partial": True})


def _mid_stream_overload(exc: anthropic.APIStatusError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    kind = (error or {}).get("type", "")
    return exc.status_code == 200 and kind in ("overloaded_error", "api_error") or (
        exc.status_code == 200 and "overloaded" in str(exc).lower()
    )


def describe_model_error(exc: anthropic.APIError) -> tuple[str, str]:
    """(code, message) for an error the SDK's retries did not cure."""
    if isinstance(exc, anthropic.AuthenticationError):
        return "model_auth_failed", "The Anthropic API rejected the server's ANTHROPIC_API_KEY: check the key and restart."
    if isinstance(exc, anthropic.PermissionDeniedError):
        return "model_permission_denied", f"The Anthropic API refused this request: {exc.message}"
    if isinstance(exc, anthropic.RateLimitError):
        return "rate_limited", "The Anthropic API rate limit was hit and retries did not help: wait a minute and send again."
    if isinstance(exc, anthropic.NotFoundError):
        return "model_not_found", f"The model was not found: {exc.message}. Choose another model in start or settings."
    if isinstance(exc, anthropic.BadRequestError):
        return "model_bad_request", f"The Anthropic API refused the request: {exc.message}"
    if isinstance(exc, anthropic.APIStatusError) and (exc.status_code == 529 or _mid_stream_overload(exc)):
        return "model_overloaded", "The model is overloaded and retries did not help: send your message again shortly."
    if isinstance(exc, anthropic.APIConnectionError):
        where = str(exc.request.url).split("?")[0].removesuffix("/v1/messages")  # ANTHROPIC_BASE_URL, or Anthropic's
        return "model_unreachable", f"The Messages API at {where} could not be reached: check ANTHROPIC_BASE_URL and the network, then retry."
    return "model_error", f"The model call failed: {exc}"


def _block(block: Any) -> dict[str, Any]:
    data = block.model_dump(exclude_none=True) if hasattr(block, "model_dump") else dict(block)
    # Keep only what the API accepts back in a request.
    if data.get("type") == "text":
        return {"type": "text", "text": data.get("text", "")}
    if data.get("type") == "tool_use":
        return {"type": "tool_use", "id": data["id"], "name": data["name"], "input": data.get("input") or {}}
    return data


def _normalised(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge consecutive same-role messages (left by an error or an interrupt) into one."""
    merged: list[dict[str, Any]] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {"role": message["role"], "content": _as_blocks(merged[-1]["content"]) + _as_blocks(message["content"])}
        else:
            merged.append(message)
    return merged


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content)


class _CloseOnStop:
    """Closes the HTTP stream as soon as `should_stop()` turns true, even between events."""

    def __init__(self, stream: Any, should_stop: Callable[[], bool], interval: float = 0.1) -> None:
        self.stream = stream
        self.should_stop = should_stop
        self.interval = interval
        self.closed = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _CloseOnStop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(self.interval):
            if self.should_stop():
                self.closed = True
                try:
                    self.stream.close()
                except Exception:  # noqa: BLE001 - closing a stream that already ended
                    pass
                return
