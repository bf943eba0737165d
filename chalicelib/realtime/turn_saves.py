"""When a turn writes its conversation and its event log.

A plain message (one reply, no tool call) saves the conversation once, with the prompt and the
reply together: until that save the prompt is durable in the session state (the running turn's
`prompt`, which a repair runs again when the conversation never got it), and the write that
ends the turn removes it. A turn that goes on (a tool call) saves at each step, and writes the
events so far to its event log with it, so a runner that dies mid-turn loses little. The events
of the last step go with the write that ends the turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalicelib.realtime.recovery import answer_cut_off_calls
from chalicelib.realtime.transcript import Transcript

Message = dict[str, Any]


class TurnSaves:
    """The agent's `on_messages_changed`: saves through the transcript when it is worth a write."""

    def __init__(self, transcript: Transcript, prompt_id: str, flush_events: Callable[[], None]) -> None:
        self.transcript = transcript
        self.prompt_id = prompt_id
        self.flush_events = flush_events
        # Messages not saved yet because they only add the prompt (saved with the reply).
        self.pending: list[Message] | None = None

    def changed(self, messages: list[Message]) -> None:
        """The turn's messages changed: save them, unless they only add the prompt or were saved."""
        transcript = self.transcript
        if transcript.saved and transcript.latest == messages:
            return
        if len(messages) == transcript.history_length + 1 and messages[-1].get("role") == "user":
            self.pending = list(messages)
            return
        transcript.save(messages, prompt_id=self.prompt_id)
        self.pending = None
        if not _ends_turn(messages):
            self.flush_events()

    def settle(self) -> None:
        """Save what is still pending (the turn ended before a reply: an error, an interrupt)."""
        if self.pending is not None:
            self.transcript.save(self.pending, prompt_id=self.prompt_id)
            self.pending = None

    def save_cut_off(self, emit: Callable[[dict[str, Any]], object]) -> None:
        """After a failure, save the messages the turn had (its last save may have failed),
        with every unanswered tool call answered as cut off, so the next turn can go on."""
        latest = self.latest
        if latest is None:
            return
        messages, added = answer_cut_off_calls(latest)
        for block in added:
            emit({"event": "tool_result", "tool_use_id": block["tool_use_id"], "content": block["content"], "is_error": True})
        if added or self.unsaved:
            # One attempt: the error is out already, and if storage is still down the lease runs
            # out and the next runner (or the next turn) repairs the stored conversation instead.
            self.transcript.save(messages, prompt_id=self.prompt_id, retry=False)
            self.pending = None

    @property
    def latest(self) -> list[Message] | None:
        """What the turn has said so far, saved or not."""
        return self.pending if self.pending is not None else self.transcript.latest

    @property
    def unsaved(self) -> bool:
        return self.pending is not None or not self.transcript.saved


def _ends_turn(messages: list[Message]) -> bool:
    """A model reply that calls no tool: the turn ends with it (its events go with the end)."""
    last = messages[-1] if messages else {}
    content = last.get("content")
    return last.get("role") == "assistant" and not (
        isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content))
