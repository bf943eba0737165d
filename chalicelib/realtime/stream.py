"""A turn's outgoing event stream: numbering, delivery, buffering for replay.

Events are numbered and kept on the thread that produced them (the agent loop's), and sent
by one pump thread per turn, in order. The agent never waits for a send: on AWS each
post_to_connection takes milliseconds, and the model keeps streaming meanwhile. Text deltas
that piled up during a send go out as one `stream` frame carrying the last delta's `seq`, so
a burst costs a few calls instead of one per delta; `seq` still only grows, and the kept
events (replayed on resume) are the individual ones.

Every connection subscribed to the session gets every event (two tabs on one session both
follow the turn). `follow` sets the connections under the same lock as `emit`, so one that
subscribes with `resume` gets its own missed events (after its own `afterSeq`) and then the
live ones, in order, each once, without taking the stream from the others; a connection whose
send fails (gone) is dropped alone.
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


class _Target:
    """One subscribed connection: its frames not yet sent, oldest first."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.connection_id = subscriber.connection_id
        self.nonce = subscriber.nonce
        self.outbox: list[dict[str, Any]] = []
        # The highest seq queued for this connection: one socket delivers in order, so a resume
        # on the same connection needs nothing at or below it again.
        self.last_queued = 0

    def queue(self, frame: dict[str, Any]) -> None:
        self.outbox.append(frame)
        self.last_queued = max(self.last_queued, frame["seq"])


class TurnStream:
    """Numbers events from `last_seq + 1`, sends them to every subscriber, keeps them all.

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
        self._closing = False
        self._earlier_events = earlier_events
        self._targets: dict[str, _Target] = {}
        # Subscriptions whose connection was found gone: not served again, whatever the state says.
        self._gone: set[str] = set()
        self._pump_thread = threading.Thread(target=self._pump, name="turn-stream", daemon=True)
        self._pump_thread.start()
        if subscriber is not None:
            self.follow([subscriber])

    def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Number the event, keep it, and queue it for every subscriber."""
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
            for target in self._targets.values():
                target.queue(payload)
            if self._targets:
                self._wake.notify_all()
        if self.observer is not None:
            self.observer(payload)
        return payload

    def follow(self, subscribers: list[Subscriber]) -> None:
        """Serve exactly these subscriptions: a new one first gets what it asked to replay
        (`resume`), one no longer listed is dropped, the others go on untouched."""
        with self._lock:
            wanted = {s.connection_id: s for s in subscribers if s.nonce not in self._gone}
            for connection_id in [c for c in self._targets if c not in wanted]:
                del self._targets[connection_id]
            for connection_id, subscriber in wanted.items():
                target = self._targets.get(connection_id)
                if target is None:
                    target = self._targets[connection_id] = _Target(subscriber)
                elif target.nonce != subscriber.nonce:
                    target.nonce = subscriber.nonce  # the same connection resumed
                else:
                    continue
                if subscriber.replay_after is not None:
                    after = max(subscriber.replay_after, target.last_queued)
                    if after < self.first_seq - 1 and self._earlier_events is not None:
                        # Only what came before this stream: a repair writes its own events into the
                        # log of the turn it repairs, and those are in `self.events` already.
                        for e in self._earlier_events(after):
                            if e["seq"] < self.first_seq:
                                target.queue(e)
                    for p in self.events:
                        if p["seq"] > after:
                            target.queue(p)
            self._wake.notify_all()

    def retarget(self, subscriber: Subscriber | None) -> None:
        """Serve this one subscriber only (None: nobody)."""
        self.follow([subscriber] if subscriber is not None else [])

    def raise_ceiling(self, ceiling: int) -> None:
        """A higher high-water mark was stored: numbers up to it may be handed out."""
        with self._lock:
            if self.ceiling is not None and ceiling > self.ceiling:
                self.ceiling = ceiling
                self._wake.notify_all()

    def serves(self, subscribers: list[Subscriber]) -> bool:
        """Whether `follow(subscribers)` would change nothing (the watcher's check at each poll)."""
        with self._lock:
            wanted = {s.connection_id: s.nonce for s in subscribers if s.nonce not in self._gone}
            return wanted == {c: t.nonce for c, t in self._targets.items()}

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
            self._wake.notify_all()
        self._pump_thread.join(timeout)
        if self._pump_thread.is_alive():
            log.warning("frames still queued after %.0f s; the client can resume to get them", timeout)

    def _pump(self) -> None:
        while True:
            with self._lock:
                while not any(t.outbox for t in self._targets.values()) and not self._closing:
                    self._wake.wait()
                batches = [(t, t.outbox) for t in self._targets.values() if t.outbox]
                if not batches:
                    return
                for target, _ in batches:
                    target.outbox = []
            for target, batch in batches:
                for frame in coalesce(batch):
                    if not self._send(target.connection_id, frame):
                        with self._lock:
                            # That client went away (GoneException): the turn and the other
                            # subscribers go on; it can resume later.
                            if self._targets.get(target.connection_id) is target:
                                del self._targets[target.connection_id]
                                self._gone.add(target.nonce)
                        break

    def _send(self, target: str, frame: dict[str, Any]) -> bool:
        try:
            return self.sender.send(target, frame)
        except Exception:  # noqa: BLE001 - a send failure must never break the turn
            log.exception("sending event %s failed", frame.get("seq"))
            return False


def serve(stream: TurnStream, subscribers: list[Subscriber]) -> None:
    """Send the turn's events to these connections (all of one API Gateway stage)."""
    if subscribers:
        stream.sender.configure(subscribers[0].domain_name, subscribers[0].stage)
    stream.follow(subscribers)


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
