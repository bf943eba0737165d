"""A turn's outgoing event stream: numbering, delivery, buffering for replay.

Events are numbered and kept on the thread that produced them (the agent loop's), and sent
by one pump thread per turn, in order. The agent never waits for a send: on AWS each
post_to_connection takes milliseconds, and the model keeps streaming meanwhile. Text deltas
that piled up during a send go out as one `stream` frame carrying the last delta's `seq`, so
a burst costs a few calls instead of one per delta; `seq` still only grows, and the kept
events (replayed on resume) are the individual ones.

`retarget` switches the connection under the same lock, so a reconnecting client gets its
missed events and then the live ones, in order, each once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import Subscriber

log = logging.getLogger(__name__)

#: How long `close` waits for the last frames to go out.
DRAIN_SECONDS = 30.0
#: How long `emit` waits for the seq ceiling to be raised before giving the turn up.
CEILING_WAIT_SECONDS = 30.0
#: A merged delta stays well under API Gateway's 128 KB message limit: 16,000 characters are
#: at most 64 KB of UTF-8.
MAX_MERGED_CHARS = 16_000


class SeqCeilingReached(Exception):
    """The turn numbered every seq it had reserved and could not reserve more (storage or
    its lease is gone): numbering on could repeat a seq another runner hands out."""


class TurnStream:
    """Numbers events from `last_seq + 1`, sends them to the subscriber, keeps them all.

    Numbers above `ceiling` (the high-water mark stored in the session state) are not handed
    out until `raise_ceiling` says a higher mark was stored.
    """

    def __init__(
        self,
        sender: Sender,
        last_seq: int,
        subscriber: Subscriber | None,
        earlier_events: Callable[[int], list[dict[str, Any]]] | None = None,
        ceiling: int | None = None,
        observer: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        # Sees every event as it is numbered (the turn's metrics).
        self.observer = observer
        self.sender = sender
        self.first_seq = last_seq + 1
        self.seq = last_seq
        self.ceiling = ceiling
        self.events: list[dict[str, Any]] = []
        self._flushed = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._outbox: list[dict[str, Any]] = []  # frames for the current target, oldest first
        self._closing = False
        self._earlier_events = earlier_events
        self._target: str | None = None
        self._served_nonce: str | None = None
        self._pump_thread = threading.Thread(target=self._pump, name="turn-stream", daemon=True)
        self._pump_thread.start()
        if subscriber is not None:
            self.retarget(subscriber)

    def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Number the event, keep it, and queue it for the current subscriber if any."""
        with self._lock:
            if self.ceiling is not None and self.seq >= self.ceiling:
                self._wake.wait_for(lambda: self.ceiling is None or self.seq < self.ceiling, CEILING_WAIT_SECONDS)
                if self.ceiling is not None and self.seq >= self.ceiling:
                    raise SeqCeilingReached(
                        f"The turn used every event number up to {self.ceiling} and could not reserve more."
                    )
            self.seq += 1
            # A frame built for a direct reply carries seq 0; a turn's event gets its own number.
            payload = {"event": event["event"], "seq": self.seq,
                       **{k: v for k, v in event.items() if k not in ("event", "seq")}}
            self.events.append(payload)
            if self._target is not None:
                self._outbox.append(payload)
                self._wake.notify()
        if self.observer is not None:
            self.observer(payload)
        return payload

    def retarget(self, subscriber: Subscriber | None) -> None:
        """Switch to a new subscriber, first replaying what it asked for (resume)."""
        with self._lock:
            if subscriber is None:
                self._target = None
                self._outbox.clear()
                return
            if subscriber.nonce == self._served_nonce:
                return
            self._served_nonce = subscriber.nonce
            self._target = subscriber.connection_id
            self._outbox.clear()  # frames meant for the connection being replaced
            if subscriber.replay_after is not None:
                after = subscriber.replay_after
                if after < self.first_seq - 1 and self._earlier_events is not None:
                    # Only what came before this stream: a repair writes its own events into the
                    # log of the turn it repairs, and those are in `self.events` already.
                    self._outbox.extend(e for e in self._earlier_events(after) if e["seq"] < self.first_seq)
                self._outbox.extend(p for p in self.events if p["seq"] > after)
            self._wake.notify()

    def raise_ceiling(self, ceiling: int) -> None:
        """A higher high-water mark was stored: numbers up to it may be handed out."""
        with self._lock:
            if self.ceiling is not None and ceiling > self.ceiling:
                self.ceiling = ceiling
                self._wake.notify_all()

    @property
    def served_nonce(self) -> str | None:
        return self._served_nonce

    def peek_unflushed(self) -> list[dict[str, Any]]:
        """Events not yet written to the event log; `mark_flushed` once they are."""
        with self._lock:
            return self.events[self._flushed :]

    def mark_flushed(self, count: int) -> None:
        """The first `count` unflushed events were written (a failed write keeps them for the next)."""
        with self._lock:
            self._flushed = min(len(self.events), self._flushed + count)

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Send what is queued, then stop the pump (a Lambda must not return before)."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._pump_thread.join(timeout)
        if self._pump_thread.is_alive():
            log.warning("frames still queued after %.0f s; the client can resume to get them", timeout)

    def _pump(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._closing:
                    self._wake.wait()
                if not self._outbox:
                    return
                batch, self._outbox = self._outbox, []
                target = self._target
            if target is None:
                continue
            for frame in coalesce(batch):
                if not self._send(target, frame):
                    with self._lock:
                        if self._target == target:
                            # The client went away (GoneException): the turn goes on; it can resume later.
                            self._target = None
                            self._outbox.clear()
                    break

    def _send(self, target: str, frame: dict[str, Any]) -> bool:
        try:
            return self.sender.send(target, frame)
        except Exception:  # noqa: BLE001 - a send failure must never break the turn
            log.exception("sending event %s failed", frame.get("seq"))
            return False


def coalesce(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge runs of text `stream` frames (up to MAX_MERGED_CHARS each), keeping the last `seq`."""
    merged: list[dict[str, Any]] = []
    for frame in frames:
        last = merged[-1] if merged else None
        if (last is not None and _is_text_delta(frame) and _is_text_delta(last)
                and len(last["content"]) + len(frame["content"]) <= MAX_MERGED_CHARS):
            merged[-1] = {**last, "seq": frame["seq"], "content": last["content"] + frame["content"]}
        else:
            merged.append(frame)
    return merged


def _is_text_delta(frame: dict[str, Any]) -> bool:
    return frame.get("event") == "stream" and frame.get("type") == "text" and set(frame) == {"event", "seq", "type", "content"}
