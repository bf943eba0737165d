"""Long conversations stored as a small head plus sealed parts, so a turn always appends.

A conversation is one object at `users/{u}/conversations/{id}.json` (the head) in the format
the REST API reads: `{conversationId, messages, metadata}`. While it is small that is all. A
turn's save is a whole rewrite of the head, so once the head would pass `SEAL_BYTES`, its
messages are sealed into immutable parts at `users/{u}/conversation-parts/{id}/{n}.json`
(each at most `PART_BYTES`, written first), and the head keeps only the messages after
them, plus `"$parts"` naming the parts in order. Every save therefore writes at most about
a mebibyte, however long the conversation: a reply is never refused for the conversation's
size. Readers (`assemble`) put the messages back together, so GET still returns the whole body.

The parts are written before the head that names them, so a crash in between leaves an
unreferenced part, never a head naming a missing one. A whole replace (REST POST, `clear`)
deletes the parts the replaced head named and the new one does not (one GET of the old head,
no listing); a part a crash left unnamed goes when the conversation is deleted.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from chalicelib import safejson
from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.base import get_many, iter_all

#: The head is sealed into parts once it would pass this size.
SEAL_BYTES = 1024 * 1024
#: The most a part holds (one message larger than this gets a part of its own).
PART_BYTES = 1024 * 1024
#: The key in a stored head that names its parts; never returned to readers.
PARTS_FIELD = "$parts"
_REMEMBERED = 64


class PartsMissing(Exception):
    """A head names a part that is not stored (written around the API, or deleted by hand)."""


@dataclass
class _Known:
    """What this process last wrote or read of a conversation: its parts and their messages."""

    parts: list[str]
    sealed: list[dict[str, Any]]


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ConversationParts:
    """Seals and reassembles conversation parts; remembers recent layouts to avoid re-reading."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._lock = threading.Lock()

    def assemble(self, user_id: str, conversation_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The whole body: the parts' messages, then the head's, without the parts field."""
        parts = body.get(PARTS_FIELD)
        if not isinstance(parts, list) or not parts:
            body.pop(PARTS_FIELD, None)
            self._remember(user_id, conversation_id, _Known([], []))
            return body
        prefix = layout.conversation_parts_prefix(user_id, conversation_id)
        if not all(isinstance(k, str) and k.startswith(prefix) and "/" not in k[len(prefix):] for k in parts):
            # Only this conversation's own parts are ever read, whatever a stored head says.
            raise PartsMissing(f"the head of conversation {conversation_id!r} names parts outside {prefix}")
        found = get_many(self.store, [str(k) for k in parts])
        sealed: list[dict[str, Any]] = []
        for key in parts:
            stored = found.get(str(key))
            if stored is None:
                raise PartsMissing(f"part {key} of conversation {conversation_id!r} is missing")
            try:
                # A part is stored data like the head, so it is parsed as guardedly.
                messages = safejson.loads(stored.body)
            except ValueError as exc:
                raise PartsMissing(f"part {key} of conversation {conversation_id!r} is unreadable: {exc}") from None
            if not isinstance(messages, list):
                raise PartsMissing(f"part {key} of conversation {conversation_id!r} is not a list of messages")
            sealed.extend(messages)
        self._remember(user_id, conversation_id, _Known([str(k) for k in parts], sealed))
        whole = {k: v for k, v in body.items() if k != PARTS_FIELD}
        whole["messages"] = sealed + list(body.get("messages") or [])
        return whole

    def head_for_append(self, user_id: str, conversation_id: str, body: dict[str, Any]) -> bytes:
        """The head to store for `body` (whole messages), sealing parts first when it is big.

        Parts already sealed are reused when the body's first messages are the ones they
        hold (a turn appends); otherwise (history rewritten) everything is sealed afresh."""
        messages = list(body.get("messages") or [])
        known = self._recall(user_id, conversation_id)
        if known.parts and len(messages) >= len(known.sealed) and messages[: len(known.sealed)] == known.sealed:
            parts, sealed = list(known.parts), list(known.sealed)
        else:
            parts, sealed = [], []
        tail = messages[len(sealed):]
        head = self._head(body, parts, tail)
        if len(head) > SEAL_BYTES and tail:
            new_parts = self._chunks(tail)
            prefix = layout.conversation_parts_prefix(user_id, conversation_id)
            for chunk in new_parts:
                # Unique names: a part is never overwritten, so a head always reads what it named.
                key = f"{prefix}{len(parts) + 1:06d}-{uuid.uuid4().hex[:8]}.json"
                self.store.put(key, encode(chunk), content_type="application/json")  # type: ignore[arg-type]
                parts.append(key)
                sealed.extend(chunk)
            tail = []
            head = self._head(body, parts, tail)
        self._remember(user_id, conversation_id, _Known(parts, sealed))
        return head

    def forget(self, user_id: str, conversation_id: str) -> None:
        """The conversation was replaced whole (REST POST, clear): its old parts no longer count."""
        self._remember(user_id, conversation_id, _Known([], []))

    def delete_unreferenced(self, user_id: str, conversation_id: str, before: list[str], named: Any) -> int:
        """After a whole replace (REST POST, `clear`): delete the parts the replaced head named
        (`before`) that the new one does not (`named`); nothing references them any more."""
        self.forget(user_id, conversation_id)
        keep = {k for k in named if isinstance(k, str)} if isinstance(named, list) else set()
        prefix = layout.conversation_parts_prefix(user_id, conversation_id)
        # Only this conversation's own parts, whatever a stored head says.
        keys = [k for k in before if k not in keep and k.startswith(prefix) and "/" not in k[len(prefix):]]
        return self.store.delete_many(keys) if keys else 0

    def delete_all(self, user_id: str, conversation_id: str) -> int:
        """Delete every part (named by a head or not)."""
        self.forget(user_id, conversation_id)
        keys = [o.key for o in iter_all(self.store, layout.conversation_parts_prefix(user_id, conversation_id))]
        return self.store.delete_many(keys) if keys else 0

    @staticmethod
    def _head(body: dict[str, Any], parts: list[str], tail: list[dict[str, Any]]) -> bytes:
        head = {k: v for k, v in body.items() if k != PARTS_FIELD}
        head["messages"] = tail
        if parts:
            head[PARTS_FIELD] = parts
        return encode(head)

    @staticmethod
    def _chunks(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        chunks: list[list[dict[str, Any]]] = [[]]
        size = 0
        for message in messages:
            length = len(encode(message)) + 1
            if chunks[-1] and size + length > PART_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(message)
            size += length
        return chunks

    def _key(self, user_id: str, conversation_id: str) -> str:
        return f"{user_id}/{conversation_id}"

    def _recall(self, user_id: str, conversation_id: str) -> _Known:
        with self._lock:
            return self._known.get(self._key(user_id, conversation_id)) or _Known([], [])

    def _remember(self, user_id: str, conversation_id: str, known: _Known) -> None:
        with self._lock:
            key = self._key(user_id, conversation_id)
            self._known[key] = known
            self._known.move_to_end(key)
            while len(self._known) > _REMEMBERED:
                self._known.popitem(last=False)
