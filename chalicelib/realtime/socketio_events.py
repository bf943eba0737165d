"""The original's Socket.IO events, translated to and from this server's JSON frames.

The original (container/agent-sdk.ts at commit ba7fe00) spoke Socket.IO 4 with events named
after the Claude Agent SDK's messages. This module is the whole mapping, and nothing else: no
transport, no session logic. Both Socket.IO edges (the local python-socketio server and the
Engine.IO framing over API Gateway) turn a client's event into plain frames with
`client_event`, hand those to the same handlers the plain protocol uses, and turn every frame
those handlers and the turn runner send back into the original's events with `server_events`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from chalicelib.realtime.protocol import START_OPTION_ALIASES

#: The namespaces served: "/" and "/ws" (the guide's io('…/ws?sessionId=…') names a namespace).
NAMESPACES = ("/", "/ws")

#: The events a client may emit, as the original accepted them.
CLIENT_EVENTS = ("start", "message", "interrupt", "get_history", "clear")

#: Human-readable `status.message` for each of our statuses (the original only sent `info`s).
_STATUS_MESSAGES = {
    "ready": "Session initialized",
    "resumed": "Session resumed",
    "interrupting": "Interrupted",
    "idle": "Nothing is running",
    "queued": "Message queued",
    "running": "Running",
    "retrying": "Retrying",
    "max_turns_reached": "Maximum turns reached",
    "budget_reached": "Budget reached",
    "sandbox_recreated": "Sandbox recreated",
}

#: Our result `stopReason` → the SDK result's `subtype`.
_RESULT_SUBTYPES = {"max_turns": "error_max_turns", "budget_reached": "error_max_budget_usd", "error": "error_during_execution"}


class EventError(Exception):
    """A client event that cannot be translated; `code` goes into the `error` event's details."""

    def __init__(self, message: str, code: str = "invalid_event") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ServerEvent:
    """One Socket.IO event to emit. `ack_tool_use_id` is set on a `hook_request`: the client's
    acknowledgement answers the permission request for that tool call."""

    name: str
    data: Any
    ack_tool_use_id: str | None = None


def client_event(name: str, args: list[Any]) -> tuple[list[dict[str, Any]], list[ServerEvent]]:
    """The plain frames (`{"action": ...}`) that carry out one client event, in order, and any
    notices to emit at once (start options nobody here knows by name).

    Raises EventError for an event the original did not have or a payload it would not take.
    """
    data = args[0] if args else None
    if name == "start":
        return start_frames(data)
    if name == "message":
        return [message_frame(data)], []
    if name in ("interrupt", "get_history"):
        return [{"action": name}], []
    if name == "clear":
        # The original interrupts the running query first, then empties the history.
        return [{"action": "interrupt"}, {"action": "clear"}], []
    raise EventError(f"Unknown event {name!r}: emit one of {', '.join(CLIENT_EVENTS)}.", "unknown_event")


def start_frames(options: Any) -> tuple[list[dict[str, Any]], list[ServerEvent]]:
    """`start(options)`: the original's option names go to the plain `start`, which lists the
    ones it does not support in its `status`; other names are answered in a `status` here."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise EventError("start takes an options object, such as {maxTurns: 50, model: 'claude-sonnet-4-5'}.")
    unknown = sorted(k for k in options if k not in START_OPTION_ALIASES)
    notices = [ServerEvent("status", {
        "type": "info", "status": "unknown_options", "unsupportedOptions": unknown,
        "message": f"Unknown start options, not applied: {', '.join(unknown)}"})] if unknown else []
    return [{"action": "start", **{k: v for k, v in options.items() if k in START_OPTION_ALIASES}}], notices


def message_frame(data: Any) -> dict[str, Any]:
    """`message({prompt, options})` or `message("text")`, as the original took both."""
    if isinstance(data, str):
        return {"action": "message", "prompt": data}
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise EventError("message takes {prompt: 'text', options: {}} or a string.")
    frame: dict[str, Any] = {"action": "message", "prompt": data["prompt"]}
    options = data.get("options")
    if isinstance(options, dict) and options:
        frame["options"] = options
    return frame


def ack_frame(tool_use_id: str, response: Any) -> dict[str, Any]:
    """A `hook_request` acknowledgement as the `permission` frame it answers.

    `{action: "continue"}` (or `{decision: "approve" | "allow"}`) allows; `{action: "block"}`,
    `{decision: "block" | "deny"}` or the SDK's `hookSpecificOutput.permissionDecision: "deny"`
    denies. An empty or unrecognised answer denies too: a tool call runs only on a clear yes.
    """
    return {"action": "permission", "toolUseId": tool_use_id, "decision": "allow" if _allows(response) else "deny"}


def _allows(response: Any) -> bool:
    if not isinstance(response, dict):
        return False
    specific = response.get("hookSpecificOutput")
    if isinstance(specific, dict) and specific.get("permissionDecision") in ("allow", "deny", "ask"):
        return bool(specific["permissionDecision"] == "allow")
    if response.get("decision") in ("block", "deny") or response.get("action") == "block" or response.get("continue") is False:
        return False
    return response.get("action") == "continue" or response.get("decision") in ("approve", "allow")


def ack_id(tool_use_id: str) -> int:
    """The Socket.IO ack id for a permission request over Engine.IO framing: derived from the
    tool call's id, so a stateless handler can tell which request an ack answers (an integer
    below 2**48, exact in JavaScript)."""
    return int(hashlib.sha256(tool_use_id.encode()).hexdigest()[:12], 16)


def server_events(frame: dict[str, Any]) -> list[ServerEvent]:
    """The original's events for one of our frames (none for a frame it had no equivalent of)."""
    event = frame.get("event")
    fields = {k: v for k, v in frame.items() if k not in ("event", "seq")}
    if event == "status":
        return _status(fields)
    if event == "stream":
        return [ServerEvent("stream", {"type": fields.get("type", "text"), "content": fields.get("content", "")})]
    if event == "message":
        if fields.get("role") == "user" and isinstance(fields.get("content"), str):
            return []  # the prompt's echo: the SDK does not send the user's own message back
        data = {"role": fields.get("role"), "content": fields.get("content"), "uuid": fields.get("uuid")}
        if fields.get("partial"):
            data["partial"] = True
        return [ServerEvent("message", data)]
    if event == "tool_use":
        return [ServerEvent("hook_notification", {"event": "PreToolUse", "data": {
            "hook_event_name": "PreToolUse", "tool_name": fields.get("name"), "tool_input": fields.get("input"),
            "tool_use_id": fields.get("id"), **({"server": True} if fields.get("server") else {})}})]
    if event == "tool_result":
        return [ServerEvent("hook_notification", {"event": "PostToolUse", "data": {
            "hook_event_name": "PostToolUse", "tool_use_id": fields.get("tool_use_id"),
            "tool_response": fields.get("content"), "is_error": bool(fields.get("is_error"))}})]
    if event == "permission_request":
        tool_use_id = str(fields.get("toolUseId"))
        return [ServerEvent("hook_request", {"event": "PreToolUse", "data": {
            "hook_event_name": "PreToolUse", "tool_name": fields.get("name"), "tool_input": fields.get("input"),
            "tool_use_id": tool_use_id, "timeoutSeconds": fields.get("timeoutSeconds")}}, ack_tool_use_id=tool_use_id)]
    if event == "result":
        return [ServerEvent("result", _result(fields))]
    if event == "error":
        details = {k: v for k, v in fields.items() if k != "message"}
        return [ServerEvent("error", {"message": fields.get("message"), "details": details})]
    if event == "history":
        messages = fields.get("messages") or []
        return [ServerEvent("history", {"messages": [_history_message(i, m) for i, m in enumerate(messages)],
                                        "conversationId": fields.get("conversationId")})]
    if event == "cleared":
        return [ServerEvent("cleared", {"type": "info", "message": "Session cleared",
                                        "conversationId": fields.get("conversationId")})]
    # permission_resolved: the acknowledgement was the answer; the tool's outcome follows as
    # PostToolUse (allowed) or as the model's reply to the denial.
    return []


def _status(fields: dict[str, Any]) -> list[ServerEvent]:
    status = fields.get("status")
    if status == "permission_received":
        return []  # the reply to an acknowledgement, which has no reply in Socket.IO
    if status == "compacted":
        return [ServerEvent("compact_boundary", {"type": "system", "subtype": "compact_boundary", "compact_metadata": {
            "trigger": "auto", "pre_tokens": fields.get("tokensBefore"), "post_tokens": fields.get("tokensAfter")}})]
    message = fields.get("message") or _STATUS_MESSAGES.get(str(status), str(status))
    unsupported = fields.get("unsupportedOptions")
    if unsupported:
        message = f"{message}; options not supported here, not applied: {', '.join(unsupported)}"
    return [ServerEvent("status", {"type": "info", **fields, "message": message})]


def _result(fields: dict[str, Any]) -> dict[str, Any]:
    usage = fields.get("usage") or {}
    stop = fields.get("stopReason")
    subtype = _RESULT_SUBTYPES.get(str(stop), "success")
    return {
        "type": "result", "subtype": subtype, "is_error": subtype != "success",
        "duration_ms": fields.get("durationMs"), "num_turns": fields.get("turns"),
        "total_cost_usd": fields.get("costUsd"),
        "usage": {"input_tokens": usage.get("inputTokens", 0), "output_tokens": usage.get("outputTokens", 0),
                  "cache_read_input_tokens": usage.get("cacheReadInputTokens", 0),
                  "cache_creation_input_tokens": usage.get("cacheCreationInputTokens", 0)},
        "model": fields.get("model"), "stop_reason": stop, "interrupted": fields.get("interrupted", False),
        **({"message": fields["message"]} if fields.get("message") else {}),
    }


def _history_message(index: int, message: Any) -> dict[str, Any]:
    body = message if isinstance(message, dict) else {"role": "user", "content": message}
    return {"role": body.get("role"), "content": body.get("content"), "uuid": body.get("uuid") or f"history-{index}",
            "timestamp": body.get("timestamp")}
