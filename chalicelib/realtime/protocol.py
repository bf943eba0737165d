"""WebSocket frames, mirroring the original's socket.io events as JSON.

Client → server frames carry an `action` (API Gateway's route selection key):
    start, message, interrupt, get_history, clear, resume, permission
Server → client frames carry an `event` and a `seq`:
    status, stream, message, tool_use, tool_result, result, error, history, cleared,
    permission_request, permission_resolved

`seq` numbers the events of turns (1, 2, 3, ... across the whole session) so a client that
reconnects can `resume` after the last one it saw. Direct replies to an action (history,
cleared, an error about a bad frame, a status acknowledging a message) are not part of that
stream and carry `seq: 0`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from chalicelib import safejson
from chalicelib.safejson import UnsafeJSON

MAX_PROMPT_CHARS = 100_000
MAX_FRAME_BYTES = 128 * 1024  # API Gateway's own limit is 128 KiB per frame.
#: The largest frame the server sends whole; larger ones go in parts (see split_frame).
MAX_PART_BYTES = 120 * 1024


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: The original's `start` options (the Claude Agent SDK's Options) this server has no
#: equivalent for: accepted by name and listed back in the `status` reply, never silently dropped.
UNSUPPORTED_START_OPTIONS = frozenset({
    "resume",
    "maxThinkingTokens", "includePartialMessages", "settingSources", "fallbackModel", "agents", "mcpServers",
    "strictMcpConfig", "executable", "executableArgs", "env", "cwd", "additionalDirectories", "forkSession",
    "continue", "extraArgs", "pathToClaudeCodeExecutable", "permissionPromptToolName", "hooks", "canUseTool",
    "abortController", "stderr", "outputFormat", "plugins", "betas", "sandbox",
})
#: Every option name `start` takes.
START_OPTION_ALIASES = frozenset({
    "maxTurns", "model", "conversationId", "systemPrompt", "maxBudgetUsd", "allowedTools", "disallowedTools",
    "permissionMode",
}) | UNSUPPORTED_START_OPTIONS
_TOOL_NAMES = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=100)]


class StartFrame(_Frame):
    """Start (or continue) the session's conversation with these options."""

    action: Literal["start"]
    max_turns: int | None = Field(default=None, alias="maxTurns", ge=1, le=200)
    model: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    conversation_id: str | None = Field(default=None, alias="conversationId")
    # The original's (Agent SDK) options this server has, for the session (see SessionOptions).
    system_prompt: str | None = Field(default=None, alias="systemPrompt", max_length=20_000)
    max_budget_usd: float | None = Field(default=None, alias="maxBudgetUsd", gt=0, le=10_000)
    allowed_tools: _TOOL_NAMES | None = Field(default=None, alias="allowedTools")
    disallowed_tools: _TOOL_NAMES | None = Field(default=None, alias="disallowedTools")
    #: The original's option names given that this server does not support (see the `status` reply).
    unsupported_options: list[str] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _set_aside_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = {k for k in data if k in UNSUPPORTED_START_OPTIONS}
            data = {k: v for k, v in data.items() if k not in UNSUPPORTED_START_OPTIONS and k != "unsupported_options"}
            # Only the default mode: the others would loosen the user's permission settings.
            if data.pop("permissionMode", "default") != "default":
                named.add("permissionMode")
            prompt = data.get("systemPrompt")
            if isinstance(prompt, dict):  # the SDK's {type: "preset", preset: "claude_code", append}
                if isinstance(prompt.get("append"), str):
                    data["systemPrompt"] = prompt["append"]
                else:
                    data.pop("systemPrompt")
                    named.add("systemPrompt")
            data["unsupported_options"] = sorted(named)
        return data


class MessageOptions(_Frame):
    """Per-message options a client may set; the server decides everything else."""

    model_config = ConfigDict(extra="ignore")
    max_turns: int | None = Field(default=None, alias="maxTurns", ge=1, le=200)


class MessageFrame(_Frame):
    """A user prompt. Queued behind a running turn (enqueue), never dropped."""

    action: Literal["message"]
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    options: MessageOptions = MessageOptions()
    # The client's id for this message: a resend with the same id (after a lost `queued`
    # answer) gets the first one's answer and never runs twice.
    message_id: str | None = Field(default=None, alias="messageId", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    # The session the client connected to, optional: the edge then reads the session's state
    # while it looks the connection up (one round trip less at turn start). The connection's
    # record still decides the session; a frame naming another is answered from the record.
    session_id: str | None = Field(default=None, alias="sessionId", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InterruptFrame(_Frame):
    action: Literal["interrupt"]


class GetHistoryFrame(_Frame):
    action: Literal["get_history"]


class ClearFrame(_Frame):
    action: Literal["clear"]


class ResumeFrame(_Frame):
    """After a reconnect: replay the events after `afterSeq`, then continue live."""

    action: Literal["resume"]
    after_seq: int = Field(alias="afterSeq", ge=0)


class PermissionFrame(_Frame):
    """The user's answer to a `permission_request`; `remember` applies it for the rest of the session."""

    action: Literal["permission"]
    tool_use_id: str = Field(alias="toolUseId", min_length=1, max_length=200)
    decision: Literal["allow", "deny"]
    remember: bool = False


ClientFrame = Annotated[
    Union[StartFrame, MessageFrame, InterruptFrame, GetHistoryFrame, ClearFrame, ResumeFrame, PermissionFrame],
    Field(discriminator="action"),
]
_client_frame: TypeAdapter[Any] = TypeAdapter(ClientFrame)
ACTIONS = ("start", "message", "interrupt", "get_history", "clear", "resume", "permission")


class FrameError(Exception):
    """A client frame that cannot be used; `code` is sent in the error event."""

    def __init__(self, message: str, code: str = "invalid_frame") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def parse_client_frame(raw: str | None) -> BaseModel:
    """Validate one client frame, raising FrameError with a message that says how to fix it."""
    if raw is None or raw in ("", "None"):  # Chalice hands over the string 'None' for no body
        raise FrameError('Empty frame: send a JSON object such as {"action": "message", "prompt": "Hi"}.')
    if len(raw.encode()) > MAX_FRAME_BYTES:
        raise FrameError(f"Frame too large: at most {MAX_FRAME_BYTES} bytes.", "frame_too_large")
    try:
        data = safejson.loads(raw)
    except UnsafeJSON as exc:
        raise FrameError(exc.message, exc.code) from None
    except ValueError as exc:
        raise FrameError(f"Frame is not valid JSON ({exc}).", "invalid_json") from None
    if not isinstance(data, dict):
        raise FrameError("A frame must be a JSON object with an 'action'.")
    if data.get("action") not in ACTIONS:
        raise FrameError(
            f"Unknown action {data.get('action')!r}: use one of {', '.join(ACTIONS)}.", "unknown_action"
        )
    try:
        return _client_frame.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'frame'}: {e['msg']}" for e in exc.errors()
        )
        raise FrameError(f"Invalid {data['action']!r} frame: {problems}.") from None


def frame(event: str, seq: int = 0, **fields: Any) -> dict[str, Any]:
    """A server frame: `{"event": ..., "seq": n, ...fields}`."""
    return {"event": event, "seq": seq, **fields}


def error_frame(message: str, code: str, seq: int = 0) -> dict[str, Any]:
    """An `error` event: what went wrong and what to do, plus a machine code."""
    return frame("error", seq, message=message, code=code)


def encode(payload: dict[str, Any]) -> str:
    """The text of a frame on the wire."""
    return json.dumps(payload, separators=(",", ":"), default=str)


def split_frame(payload: dict[str, Any], limit: int = MAX_PART_BYTES) -> list[str]:
    """The frame's text, or parts of it when it is larger than `limit` bytes.

    API Gateway refuses a frame over 128 KiB (PayloadTooLargeException), so a big `message`,
    `tool_result` or `history` is sent as `{"event", "seq", "part", "parts", "data"}` frames:
    `data` is a slice of the whole frame's JSON text; a client joins the `data` of parts
    1..`parts` (same `event` and `seq`, sent in order) and parses the result as the frame."""
    text = encode(payload)
    if len(text.encode()) <= limit:
        return [text]
    # The text is ASCII (encode escapes the rest), and escaping it again into `data` at most
    # doubles a character (a quote or a backslash): slices of this many characters stay under
    # the limit, with room for the envelope.
    step = (limit - 256) // 2
    slices = [text[i:i + step] for i in range(0, len(text), step)]
    return [encode({"event": payload.get("event"), "seq": payload.get("seq", 0), "part": n, "parts": len(slices),
                    "data": piece}) for n, piece in enumerate(slices, start=1)]


def cut_short_result(started: datetime, *, turns: int) -> dict[str, Any]:
    """The `result` of a turn that ended on an error outside the agent loop (or was cut off):
    usage and cost are not known there. Clients wait for `result` to end a turn."""
    return {
        "event": "result", "turns": turns,
        "durationMs": int((datetime.now(timezone.utc) - started).total_seconds() * 1000),
        "usage": {"inputTokens": 0, "outputTokens": 0, "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0},
        "costUsd": None, "model": None, "stopReason": "error", "interrupted": False,
    }
