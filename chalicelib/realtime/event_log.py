"""Durable copies of a turn's events, so a client that reconnects after the turn can catch up.

While a turn runs, the runner replays from memory; it writes the events here at the end of
the turn (and at each message boundary, so a runner that dies mid-turn loses little). Only the
current and last turn are kept.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.base import get_many, iter_all


class EventLog:
    """Per-turn event chunks at `sessions/{id}/events/{turnId}/{firstSeq}.json`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _prefix(self, session_id: str, turn_id: str | None = None) -> str:
        base = layout.session_prefix(session_id) + "events/"
        return f"{base}{turn_id}/" if turn_id else base

    def append(self, session_id: str, turn_id: str, events: list[dict[str, Any]]) -> None:
        """Write one chunk (the events since the last chunk). No read-modify-write: chunks
        are immutable and named by their first seq."""
        if not events:
            return
        key = f"{self._prefix(session_id, turn_id)}{events[0]['seq']:010d}.json"
        self.store.put(key, json.dumps(events, default=str).encode(), content_type="application/json")

    def read(self, session_id: str, turn_id: str, after_seq: int) -> list[dict[str, Any]]:
        """The turn's events with seq > after_seq, in order."""
        keys = [o.key for o in iter_all(self.store, self._prefix(session_id, turn_id))]
        chunks = get_many(self.store, keys)
        events = [e for key in sorted(keys) if chunks[key] for e in json.loads(chunks[key].body)]  # type: ignore[union-attr]
        return [e for e in events if e["seq"] > after_seq]

    def prune(self, session_id: str, keep_turn_ids: set[str]) -> int:
        """Delete the chunks of every turn not in `keep_turn_ids`."""
        prefix = self._prefix(session_id)
        stale = [
            o.key for o in iter_all(self.store, prefix) if o.key[len(prefix):].split("/", 1)[0] not in keep_turn_ids
        ]
        return self.store.delete_many(stale) if stale else 0
