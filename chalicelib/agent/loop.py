"""The agent loop on the streaming Messages API.

One call of `run_turn` answers one user prompt: stream a reply, run the tools it asks for in
the sandbox, send the results back, and repeat until the model stops, `max_turns` replies
have been made, or the user interrupts. Every complete message is handed to
`on_messages_changed` at once, so a crash, a disconnect or an interrupt loses nothing that was
said.

Each request carries prompt-cache breakpoints (`caching`), is sent from the working context
(`memory`: summary + recent messages) and is compacted first when it would pass 80% of the
context window, or after the API answered "prompt is too long" (`compaction`). Thinking and
redacted_thinking blocks are kept exactly as received: their signatures are checked on replay.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic

from chalicelib.agent.caching import with_breakpoints
from chalicelib.agent.compaction import (
    CHUNK_SHARE,
    COMPACT_AT,
    KEEP_SHARE,
    SUMMARY_MAX_TOKENS,
    SUMMARY_SYSTEM,
    TokenEstimator,
    choose_cut,
    chunks,
    compacted_context,
    prompt_too_long,
    render_transcript,
    summary_request,
)
from chalicelib.agent.memory import WorkingContext, working_messages
from chalicelib.agent.models import spec_for
from chalicelib.agent.permissions import ToolGate
from chalicelib.agent.pricing import PriceTable, Usage
from chalicelib.agent.server_tools import (
    MCP_BETA,
    SERVER_RESULT_TYPES,
    SERVER_USE_TYPES,
    ServerTools,
    server_block_events,
)
from chalicelib.agent.tools import TOOLS, run_tool
from chalicelib.sandbox.base import Sandbox
from chalicelib.telemetry import tracing

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Any]
MID_STREAM_RETRIES = 3
# A connection that breaks while a stream is read. anthropic up to 2.16 raised the transport
# error unwrapped (httpx's, or httpx2's from 2.14 on); 2.17 wraps it in APIConnectionError
# (`iter_response_bytes`). Both forms are a cut reply, not an unreachable API: the request had
# been answered, so the reply is asked for again.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    importlib.import_module(name).TransportError for name in ("httpx", "httpx2") if importlib.util.find_spec(name)
)
_CONNECTION_BREAKS: tuple[type[BaseException], ...] = (anthropic.APIConnectionError, *_TRANSPORT_ERRORS)


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
    compactions: int = 0
    costs: list[float | None] = field(default_factory=list)
    budget_message: str | None = None

    def add_call(self, usage: object, model: str, prices: PriceTable) -> None:
        """Count one API call's tokens and price them (a call's own size picks a price band)."""
        call = Usage.of(usage)
        self.usage.add(call)
        self.costs.append(prices.cost(model, call))

    def total_cost(self) -> float | None:
        if any(c is None for c in self.costs):
            return None
        return round(sum(c for c in self.costs if c is not None), 6)


def usage_attributes(usage: Usage, cost_usd: float | None) -> dict[str, int | float | None]:
    """A model call's (or a turn's) tokens and cost as span attributes (GenAI semantic conventions)."""
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
        "cost_usd": cost_usd,
    }


def turn_attributes(result: TurnResult) -> dict[str, int | float | str | bool | None]:
    """A finished turn as span attributes: its totals, how many model replies, and why it stopped."""
    return {**usage_attributes(result.usage, result.cost_usd), "turn.model_calls": result.turns,
            "turn.stop_reason": result.stop_reason, "turn.interrupted": result.interrupted,
            "turn.compactions": result.compactions}


class _Interrupted(Exception):
    pass


class ModelStreamCut(Exception):
    """The model's stream ended without `message_stop` (the connection dropped mid-reply).

    The SDK hands back whatever arrived as if it were the whole message, so a cut reply would
    be saved as complete, and a cut tool call as `input: {}`. It is retried like an overload.
    """


def _connection_dropped(exc: BaseException, where: str) -> ModelStreamCut:
    """The cut a connection break (one of _CONNECTION_BREAKS) raised while an open stream was
    read stands for (`where`: "mid-reply", "mid-summary")."""
    return ModelStreamCut(f"The connection to the model dropped {where} ({type(exc).__name__}).")


@dataclass
class _Request:
    """What every call of a turn shares, and the working context it is sent from."""

    client: Any
    model: str
    system: list[dict[str, Any]]
    max_tokens: int
    thinking: dict[str, Any] | None
    window: int
    binds_thinking: bool
    context: WorkingContext
    on_context_changed: Callable[[WorkingContext], None]
    estimator: TokenEstimator = field(default_factory=TokenEstimator)
    server: ServerTools = field(default_factory=ServerTools)

    @property
    def tools(self) -> list[dict[str, Any]]:
        return TOOLS + self.server.tools

    def payload(self, stored: list[dict[str, Any]]) -> dict[str, Any]:
        return {"system": self.system, "tools": self.tools, "messages": _normalised(working_messages(stored, self.context))}

    def stream(self, **kwargs: Any) -> Any:
        """The SDK's streaming call; through the beta API (with its header) when MCP servers are on,
        or when the history holds MCP blocks (from when they were: the plain API does not know them)."""
        if self.server.mcp_servers:
            return self.client.beta.messages.stream(betas=self.server.betas, mcp_servers=self.server.mcp_servers, **kwargs)
        if _holds_mcp_blocks(kwargs.get("messages") or []):
            return self.client.beta.messages.stream(betas=[MCP_BETA], **kwargs)
        return self.client.messages.stream(**kwargs)


def run_turn(
    *,
    client: anthropic.Anthropic,
    model: str,
    system: str | list[dict[str, Any]],
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
    context: WorkingContext | None = None,
    on_context_changed: Callable[[WorkingContext], None] | None = None,
    context_window: int | None = None,
    thinking: dict[str, Any] | None = None,
    gate: ToolGate | None = None,
    server: ServerTools | None = None,
    budget_usd: float | None = None,
) -> TurnResult:
    """Answer `prompt`; emit stream/message/tool_use/tool_result/result (or error) events.

    `system` is the system prompt (text or blocks); `context` the working context of `history`
    (None: all of it); `context_window` overrides the model's window; `thinking` is the API's
    thinking parameter (None: the model's default). `gate` applies the user's tool permissions;
    `server` adds Anthropic-run tools (web, MCP); past `budget_usd` the loop stops after the
    current step.
    """
    started = time.monotonic()
    result = TurnResult()
    spec = spec_for(model)
    request = _Request(
        client=client, model=model,
        system=[{"type": "text", "text": system}] if isinstance(system, str) else list(system),
        max_tokens=max_tokens, thinking=thinking, window=context_window or spec.context_window,
        binds_thinking=spec.binds_thinking, context=context or WorkingContext(conversation_id=""),
        on_context_changed=on_context_changed or (lambda _: None), server=server or ServerTools(),
    )
    messages = list(history)
    user_message = {"role": "user", "content": prompt}
    messages.append(user_message)
    emit({"event": "message", "role": "user", "content": prompt, "uuid": prompt_id})
    on_messages_changed(messages)
    try:
        while True:
            if should_stop():
                raise _Interrupted
            spent = result.total_cost()
            if budget_usd is not None and spent is not None and spent >= budget_usd:
                result.stop_reason = "budget_reached"
                result.budget_message = (f"Stopped: this message has cost ${spent:.4f}, which reaches its budget of ${budget_usd:g} "
                                         "(maxBudgetUsd in the settings, capped by the server's MAX_BUDGET_USD). "
                                         "Send another message to continue.")
                emit({"event": "status", "status": "budget_reached", "costUsd": spent, "budgetUsd": budget_usd,
                      "message": result.budget_message})
                break
            if result.turns >= max_turns:
                result.stop_reason = "max_turns"
                emit({"event": "status", "status": "max_turns_reached", "maxTurns": max_turns,
                      "message": f"Stopped after {max_turns} model replies (maxTurns). Send another message to continue."})
                break
            result.turns += 1
            reply = _call(request, messages, emit, should_stop, result, prices, retry_backoff)
            content = [_block(b) for b in reply.content]
            messages.append({"role": "assistant", "content": content})
            emit({"event": "message", "role": "assistant", "content": content, "uuid": reply.id})
            on_messages_changed(messages)
            if reply.stop_reason == "pause_turn":
                continue  # a long server-tool step paused: sending the reply back lets the model go on
            if reply.stop_reason != "tool_use":
                result.stop_reason = reply.stop_reason or "end_turn"
                break
            results = []
            for block in reply.content:
                if block.type != "tool_use":
                    continue
                emit({"event": "tool_use", "id": block.id, "name": block.name, "input": block.input})
                refusal = "Interrupted by the user before this ran." if should_stop() else None
                if refusal is None and gate is not None:
                    refusal = gate.refusal(block.id, block.name, dict(block.input or {}))
                if refusal is not None:
                    outcome = {"type": "tool_result", "tool_use_id": block.id, "content": refusal, "is_error": True}
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
    except ModelStreamCut as exc:
        result.error_code = "model_stream_cut"
        result.stop_reason = "error"
        emit({"event": "error", "code": "model_stream_cut", "message": f"{exc} Retries did not help: send your message again."})
    result.duration_ms = int((time.monotonic() - started) * 1000)
    result.cost_usd = result.total_cost()
    final = {
        "event": "result", "turns": result.turns, "durationMs": result.duration_ms, "usage": result.usage.to_wire(),
        "costUsd": result.cost_usd, "model": model, "stopReason": result.stop_reason, "interrupted": result.interrupted,
    }
    if result.budget_message:
        final.update(budgetUsd=budget_usd, message=result.budget_message)
    emit(final)
    return result


def _call(request: _Request, messages: list[dict[str, Any]], emit: Emit, should_stop: Callable[[], bool],
          result: TurnResult, prices: PriceTable, backoff: float) -> Any:
    """One model reply from the working context: compacted first when the request would pass
    COMPACT_AT of the window; compacted and retried once when the API says it is too long."""
    payload = request.payload(messages)
    chars = request.estimator.chars(payload)  # the whole request serialised once per call
    if request.estimator.tokens_of_chars(chars) > COMPACT_AT * request.window:
        if _compact(request, messages, request.window, request.estimator.tokens_of_chars(chars), emit, result, prices,
                    backoff):
            payload = request.payload(messages)
            chars = request.estimator.chars(payload)
    try:
        return _stream_reply(request, payload, chars, messages, emit, should_stop, result, prices, backoff)
    except anthropic.BadRequestError as exc:
        too_long = prompt_too_long(str(exc.message))
        if too_long is None:
            raise
        sent = request.estimator.tokens_of_chars(chars)
        # The endpoint's real limit may be below ours: compact to what it said (or 3/4 of what we sent).
        limit = min(request.window, too_long[1] or int(sent * 0.75))
        log.warning("the model said the prompt is too long (%s); compacting to %d tokens and retrying", too_long, limit)
        if not _compact(request, messages, limit, sent, emit, result, prices, backoff):
            raise
        payload = request.payload(messages)
        return _stream_reply(request, payload, request.estimator.chars(payload), messages, emit, should_stop, result,
                             prices, backoff)


def _compact(request: _Request, messages: list[dict[str, Any]], window: int, tokens_before: int, emit: Emit,
             result: TurnResult, prices: PriceTable, backoff: float) -> bool:
    """Summarise the older part of the working context; False when there is nothing to fold."""
    context = request.context
    keep = max(1_000, int(window * KEEP_SHARE) - request.estimator.tokens(request.system))
    cut = choose_cut(messages, context, keep, request.estimator)
    if cut is None:
        return False
    limit = max(4_000, int(window * CHUNK_SHARE * request.estimator.chars_per_token))
    summary = context.summary
    for piece in chunks(render_transcript(messages[context.kept_from:cut]), limit):
        reply = _summary_reply(request, summary_request(summary, piece), backoff)
        result.add_call(reply.usage, request.model, prices)
        text = "".join(b.text for b in reply.content if b.type == "text").strip()
        if not text:
            log.warning("the summarising call returned no text; not compacting")
            return False
        summary = text
    assert summary is not None
    request.context = compacted_context(context, messages, cut, summary, binds_thinking=request.binds_thinking)
    result.compactions += 1
    tokens_after = request.estimator.tokens(request.payload(messages))
    emit({"event": "status", "status": "compacted", "tokensBefore": tokens_before, "tokensAfter": tokens_after,
          "summarizedMessages": cut - context.kept_from,
          "message": "Older messages were summarised to stay within the context window; the saved conversation keeps them all."})
    request.on_context_changed(request.context)
    return True


def _summary_reply(request: _Request, messages: list[dict[str, Any]], backoff: float) -> Any:
    """One summarising call, whole: a summary cut off mid-stream would be kept as the working
    context (the SDK returns the partial message as if complete), so it is asked for again."""
    for attempt in range(MID_STREAM_RETRIES + 1):
        try:
            with tracing.span("model call", {"gen_ai.request.model": request.model, "model.purpose": "summary",
                                             "model.attempt": attempt + 1}, kind="client"), \
                    request.client.messages.stream(model=request.model, max_tokens=SUMMARY_MAX_TOKENS, system=SUMMARY_SYSTEM,
                                                   messages=messages) as stream:
                try:
                    if not any(event.type == "message_stop" for event in stream):
                        raise ModelStreamCut("The summary of earlier messages was cut off before it ended (no message_stop).")
                    return stream.get_final_message()
                except _CONNECTION_BREAKS as exc:
                    raise _connection_dropped(exc, "mid-summary") from exc
        except ModelStreamCut as exc:
            if attempt == MID_STREAM_RETRIES:
                raise
            log.warning("summarising call cut off (attempt %d), asking again: %s", attempt + 1, exc)
            time.sleep(backoff * (2**attempt))
    raise AssertionError("unreachable")


def _stream_reply(request: _Request, payload: dict[str, Any], request_chars: int, messages: list[dict[str, Any]],
                  emit: Emit, should_stop: Callable[[], bool], result: TurnResult, prices: PriceTable,
                  backoff: float) -> Any:
    """One model reply, streamed. Retries a mid-stream overloaded error (which the SDK does
    not) and a stream cut off before `message_stop` from scratch, telling the client to
    discard the partial text first."""
    system, marked = with_breakpoints(payload["system"], payload["messages"])
    for attempt in range(MID_STREAM_RETRIES + 1):
        streamed: list[str] = []
        thought: list[str] = []  # thinking shown to the client, dropped with the text on a retry
        try:
            with tracing.span("model call", {"gen_ai.request.model": request.model, "model.attempt": attempt + 1},
                              kind="client") as span:
                with request.stream(
                    model=request.model, max_tokens=request.max_tokens, system=system or anthropic.NOT_GIVEN,
                    messages=marked, tools=request.tools, thinking=request.thinking or anthropic.NOT_GIVEN,
                ) as stream:
                    with _CloseOnStop(stream, should_stop) as watcher:
                        try:
                            complete = False
                            for event in stream:
                                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                                    streamed.append(event.delta.text)
                                    emit({"event": "stream", "type": "text", "content": event.delta.text})
                                elif event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                                    thought.append(event.delta.thinking)
                                    emit({"event": "stream", "type": "thinking", "content": event.delta.thinking})
                                elif event.type == "content_block_stop":
                                    # Server tools ran on Anthropic's side: show each call and result as it completes.
                                    shown = server_block_events(_block(event.content_block))
                                    if shown is not None:
                                        emit(shown)
                                elif event.type == "message_stop":
                                    complete = True
                                if should_stop():
                                    raise _Interrupted
                            if not complete:
                                raise ModelStreamCut("The model's reply was cut off before it ended (no message_stop).")
                            reply = stream.get_final_message()
                        except Exception as exc:
                            if watcher.closed or should_stop():
                                raise _Interrupted from None
                            if isinstance(exc, _CONNECTION_BREAKS):
                                raise _connection_dropped(exc, "mid-reply") from exc
                            raise
                result.add_call(reply.usage, request.model, prices)
                span.set(usage_attributes(Usage.of(reply.usage), result.costs[-1]))
                request.estimator.calibrate(request_chars, Usage.of(reply.usage).prompt_tokens)
                return reply
        except _Interrupted:
            _keep_partial(streamed, messages, emit)
            raise
        except ModelStreamCut as exc:
            if attempt == MID_STREAM_RETRIES:
                raise
            log.warning("model stream cut off (attempt %d), retrying the reply: %s", attempt + 1, exc)
            emit({"event": "status", "status": "retrying", "reason": "stream_cut", "discardStreamed": len("".join(streamed)),
                  "discardThinking": len("".join(thought)),
                  "message": "The connection to the model dropped mid-reply; discard the partial text, it is being regenerated."})
            time.sleep(backoff * (2**attempt))
        except anthropic.APIStatusError as exc:
            if not _mid_stream_overload(exc) or attempt == MID_STREAM_RETRIES:
                raise
            log.warning("mid-stream overload (attempt %d), retrying the reply", attempt + 1)
            emit({"event": "status", "status": "retrying", "reason": "overloaded", "discardStreamed": len("".join(streamed)),
                  "discardThinking": len("".join(thought)),
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
    if hasattr(block, "model_dump") and getattr(block, "type", None) in SERVER_USE_TYPES + SERVER_RESULT_TYPES:
        # A server tool's blocks go back exactly as the API sent them: the fields it set, nulls included.
        return dict(block.model_dump(exclude_unset=True))
    data = block.model_dump(exclude_none=True) if hasattr(block, "model_dump") else dict(block)
    # Keep only what the API accepts back in a request.
    if data.get("type") == "text":
        return {"type": "text", "text": data.get("text", "")}
    if data.get("type") == "tool_use":
        return {"type": "tool_use", "id": data["id"], "name": data["name"], "input": data.get("input") or {}}
    # Sent back exactly as received: the API verifies the signature (or the opaque data).
    if data.get("type") == "thinking":
        return {"type": "thinking", "thinking": data.get("thinking", ""), "signature": data.get("signature", "")}
    if data.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": data.get("data", "")}
    return data


def _holds_mcp_blocks(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(b.get("type") in ("mcp_tool_use", "mcp_tool_result") for b in m["content"])
               for m in messages)


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
