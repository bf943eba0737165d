"""A resume after a turn replays its events: from the state's tail (a plain message writes no
log object), from its log (a turn with tool calls), or both; states written before the tail
existed are replayed from the log alone."""

from __future__ import annotations

import json
from pathlib import Path

from chalicelib.realtime.event_log import EventLog
from chalicelib.realtime.state import SessionState
from chalicelib.storage import layout
from chalicelib.storage.local import LocalDirectoryStore


def events(first: int, last: int) -> list[dict[str, object]]:
    return [{"event": "stream", "seq": seq, "type": "text", "content": str(seq)} for seq in range(first, last + 1)]


def test_a_plain_turn_is_replayed_from_the_state_without_reading_a_log(tmp_path: Path) -> None:
    log = EventLog(LocalDirectoryStore(tmp_path / "none"))  # no log objects at all
    state = SessionState(session_id="s", user_id="u", conversation_id="s", last_turn_id="t1",
                         last_events=events(1, 5), last_turn_logged=False)
    assert [e["seq"] for e in log.replay(state, 2)] == [3, 4, 5]


def test_a_turn_with_a_log_and_a_tail_is_replayed_in_order_once(tmp_path: Path) -> None:
    log = EventLog(LocalDirectoryStore(tmp_path))
    log.append("s", "t1", events(1, 3))
    state = SessionState(session_id="s", user_id="u", conversation_id="s", last_turn_id="t1",
                         last_events=events(3, 6), last_turn_logged=True)
    assert [e["seq"] for e in log.replay(state, 0)] == [1, 2, 3, 4, 5, 6]


def test_a_state_written_before_the_tail_is_replayed_from_the_log(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    log = EventLog(store)
    log.append("s", "t1", events(1, 4))
    old = {"sessionId": "s", "userId": "u", "conversationId": "s", "lastTurnId": "t1", "lastSeq": 4}
    store.put(layout.session_key("s", "state.json"), json.dumps(old).encode())
    state = SessionState.model_validate_json(store.get(layout.session_key("s", "state.json")).body)
    assert state.last_turn_logged and state.last_events is None
    assert [e["seq"] for e in log.replay(state, 1)] == [2, 3, 4]
