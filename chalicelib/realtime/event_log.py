"""Durable copies of a turn's events, so a client that reconnects after the turn can catch up.

While a turn runs, the runner replays from memory; it writes the events here at each message
boundary a turn goes on from (a tool call, so a runner that dies mid-turn loses little). The
events after the last chunk go with the write that ends the turn, in the state
(`SessionState.last_events`), unless they are too large for it; a plain message writes no chunk.
Only the current and last turn are kept.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.realtime.durable import durably
from chalicelib.realtime.state import SessionState
from chalicelib.realtime.stream import TurnStream
from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.base import get_many
from chalicelib.storage.listing import iter_all


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

    def replay(self, state: SessionState, after_seq: int) -> list[dict[str, Any]]:
        """The events of the state's last turn with seq > after_seq: its log's chunks (read only
        when it wrote any) and the tail its ending write kept in the state."""
        if state.last_turn_id is None:
            return []
        logged = self.read(state.session_id, state.last_turn_id, after_seq) if state.last_turn_logged else []
        seen = {e["seq"] for e in logged}
        inline = [e for e in state.last_events or [] if e["seq"] > after_seq and e["seq"] not in seen]
        return sorted([*logged, *inline], key=lambda e: int(e["seq"]))

    def prune(self, session_id: str, keep_turn_ids: set[str]) -> int:
        """Delete the chunks of every turn not in `keep_turn_ids`."""
        prefix = self._prefix(session_id)
        stale = [
            o.key for o in iter_all(self.store, prefix) if o.key[len(prefix):].split("/", 1)[0] not in keep_turn_ids
        ]
        return self.store.delete_many(stale) if stale else 0


class TurnLog:
    """One turn's writes to its event log: each call writes the events not written yet."""

    def __init__(self, events: EventLog, session_id: str, turn_id: str, stream: TurnStream) -> None:
        self.events = events
        self.session_id = session_id
        self.turn_id = turn_id
        self.stream = stream
        #: Whether any chunk was written (the turn's end says so, for pruning and replay).
        self.logged = False

    def flush(self) -> None:
        chunk = self.stream.peek_unflushed()
        if chunk:
            durably(lambda: self.events.append(self.session_id, self.turn_id, chunk), "saving the turn's events")
            self.logged = True
            self.stream.mark_flushed(len(chunk))
