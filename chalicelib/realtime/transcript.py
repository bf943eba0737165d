"""A turn's conversation as stored: read once at the start, saved after every message.

Each save is fenced by the turn's lease (see lease.py): it is conditional on the head as this
turn last read or wrote it, and carries the lease epoch, so a runner that was paused past its
lease and wakes up with an old copy of the conversation cannot write it back over what the
new owner said since.

A turn reads the head and only the sealed parts its working context needs (from the compaction
point the head records; see services/conversation_parts.py): the history it gets back has the
earlier messages as placeholders, which the agent reads (`RecentHistory.whole`) only when its
context turns out to start before them, and which a save never writes.
"""

from __future__ import annotations

from typing import Any

from chalicelib.realtime.durable import durably
from chalicelib.realtime.recovery import answer_cut_off_calls
from chalicelib.realtime.state import utcnow
from chalicelib.services.conversation_parts import RecentHistory, Sealed
from chalicelib.services.conversations import ConversationsService, Fence

Message = dict[str, Any]


class Transcript:
    """One conversation as one turn (or one repair) sees and saves it."""

    def __init__(self, conversations: ConversationsService, user_id: str, conversation_id: str, fence: Fence) -> None:
        self.conversations = conversations
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.fence = fence
        self.body: dict[str, Any] = {"conversationId": conversation_id}
        self.metadata: dict[str, Any] = {}
        self.etag: str | None = None
        self.exists = False
        # The sealed parts as this turn read and wrote them (the placeholders' owner).
        self.sealed = Sealed()
        # What the turn has said so far, for saving it after a failure.
        self.latest: list[Message] | None = None
        self.saved = True
        self.history_length = 0
        # The tool_result blocks `load` added for calls a cut-off turn left unanswered.
        self.repaired: list[dict[str, Any]] = []

    def load(self) -> list[Message]:
        """Read the stored conversation; return its messages (a RecentHistory: those before
        the working context not read yet), any call a cut-off turn left
        unanswered answered as cut off (the API refuses such a history on every later turn).
        Raises ConversationUnreadable for a head that does not parse."""
        loaded = durably(lambda: self.conversations.load_recent(self.user_id, self.conversation_id), "reading the conversation")
        if loaded is not None:
            self.body, self.etag, self.sealed, self.exists = dict(loaded[0]), loaded[1], loaded[2], True
        self.body.setdefault("conversationId", self.conversation_id)
        self.metadata = dict(self.body.get("metadata") or {}) if isinstance(self.body.get("metadata"), dict) else {}
        history, self.repaired = answer_cut_off_calls(list(self.body.get("messages") or []))
        self.history_length = len(history)
        return RecentHistory(history, self._load_rest)

    def _load_rest(self, messages: list[Message]) -> None:
        durably(lambda: self.conversations.load_rest(self.conversation_id, self.sealed, messages), "reading the conversation")

    def save(self, messages: list[Message], *, prompt_id: str | None = None, retry: bool = True) -> None:
        """Write the conversation with `messages`; `prompt_id` records the prompt as saved (a
        repair runs a prompt again only if it never was). Raises FencedOut once another runner
        owns the session."""
        self.latest, self.saved = list(messages), False
        self.body["messages"] = messages
        self.metadata["updatedAt"] = utcnow().isoformat()
        if prompt_id is not None:
            self.metadata["lastPromptId"] = prompt_id
        self.body["metadata"] = self.metadata

        def write() -> str:
            return self.conversations.append(self.user_id, self.conversation_id, self.body, fence=self.fence, etag=self.etag,
                                             sealed=self.sealed)

        self.etag = durably(write, "saving the conversation") if retry else write()
        self.exists = True
        self.saved = True

    def replies(self) -> int:
        """Model replies made in this turn so far."""
        return sum(1 for m in (self.latest or [])[self.history_length:] if m.get("role") == "assistant")

