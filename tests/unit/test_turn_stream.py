"""A turn's event stream: sends never hold up the agent, piled-up deltas merge, order and seq hold."""

from __future__ import annotations

import threading
from typing import Any

from chalicelib.realtime.state import Subscriber
from chalicelib.realtime.stream import MAX_MERGED_CHARS, TurnStream, coalesce


class GatedSender:
    """A Sender whose calls wait for `gate`; connections in `gone` answer False (GoneException)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.calls = 0
        self.gone: set[str] = set()

    def send(self, connection_id: str, payload: dict[str, Any]) -> bool:
        self.calls += 1
        assert self.gate.wait(10), "the test never opened the gate"
        if connection_id in self.gone:
            return False
        self.sent.append((connection_id, payload))
        return True

    def configure(self, domain_name: str, stage: str) -> None:
        return None


def subscriber(connection: str, replay_after: int | None = None) -> Subscriber:
    return Subscriber(connection_id=connection, domain_name="d", stage="api", replay_after=replay_after)


def delta(text: str) -> dict[str, Any]:
    return {"event": "stream", "type": "text", "content": text}


def test_emit_does_not_wait_for_a_slow_send_and_piled_up_deltas_merge() -> None:
    sender = GatedSender()
    sender.gate.clear()  # the first send hangs, as a slow post_to_connection would
    stream = TurnStream(sender, last_seq=0, subscriber=subscriber("c1"))
    emitter = threading.Thread(target=lambda: [stream.emit(delta(f"w{i} ")) for i in range(50)])
    emitter.start()
    emitter.join(10)
    assert not emitter.is_alive()  # all 50 emitted while the first send was still blocked
    sender.gate.set()
    stream.close()
    frames = [f for _, f in sender.sent]
    assert "".join(f["content"] for f in frames) == "".join(f"w{i} " for i in range(50))
    assert len(frames) < 50 and frames[-1]["seq"] == 50
    assert [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})  # strictly increasing
    assert [e["seq"] for e in stream.events] == list(range(1, 51))  # kept one by one, for resume


def test_only_adjacent_text_deltas_merge_and_order_is_kept() -> None:
    frames = [
        {"event": "stream", "seq": 1, "type": "text", "content": "a"},
        {"event": "stream", "seq": 2, "type": "text", "content": "b"},
        {"event": "tool_use", "seq": 3, "name": "bash", "input": {}},
        {"event": "stream", "seq": 4, "type": "text", "content": "c"},
        {"event": "status", "seq": 5, "status": "retrying"},
        {"event": "stream", "seq": 6, "type": "text", "content": "d"},
    ]
    assert coalesce(frames) == [
        {"event": "stream", "seq": 2, "type": "text", "content": "ab"},
        frames[2], frames[3], frames[4], frames[5],
    ]


def test_a_gone_client_gets_no_more_calls_and_a_resume_gets_everything_once() -> None:
    sender = GatedSender()
    sender.gone.add("old")
    stream = TurnStream(sender, last_seq=10, subscriber=subscriber("old"))
    stream.emit({"event": "status", "status": "running"})
    for i in range(5):
        stream.emit(delta(str(i)))
    stream.close()
    assert sender.calls <= 2 and sender.sent == []  # stopped at the first GoneException
    resumed = TurnStream(sender, last_seq=stream.seq, subscriber=None, earlier_events=lambda after: [
        e for e in stream.events if e["seq"] > after])
    resumed.retarget(subscriber("new", replay_after=11))  # saw the status, missed the deltas
    resumed.emit(delta("5"))
    resumed.close()
    frames = [f for c, f in sender.sent if c == "new"]
    assert "".join(f["content"] for f in frames) == "012345"
    assert frames[-1]["seq"] == 17


def test_events_before_any_subscriber_are_kept_not_sent() -> None:
    sender = GatedSender()
    stream = TurnStream(sender, last_seq=0, subscriber=None)
    stream.emit(delta("unseen"))
    stream.close()
    assert sender.calls == 0 and stream.peek_unflushed() == [{"event": "stream", "seq": 1, "type": "text", "content": "unseen"}]


def test_a_merged_frame_stays_under_the_message_size_limit() -> None:
    piece = "x" * 1000
    frames = [{"event": "stream", "seq": i, "type": "text", "content": piece} for i in range(1, 41)]
    merged = coalesce(frames)
    assert all(len(f["content"]) <= MAX_MERGED_CHARS for f in merged) and len(merged) == 3
    assert "".join(f["content"] for f in merged) == piece * 40 and merged[-1]["seq"] == 40
