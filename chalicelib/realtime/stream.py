"""A turn's outgoing event stream: numbering, delivery, buffering for replay.

Sends happen on the thread that produced the event (the agent loop's), under a lock shared
with `retarget`, so a reconnecting client gets its missed events and then the live ones in
order, each exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import Subscriber

log = logging.getLogger(__name__)


class TurnStream:
    """Numbers events from `last_seq + 1`, sends them to the subscriber, keeps them all."""

    def __init__(
        self,
        sender: Sender,
        last_seq: int,
        subscriber: Subscriber | None,
        earlier_events: Callable[[int], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.sender = sender
        self.first_seq = last_seq + 1
        self.seq = last_seq
        self.events: list[dict[str, Any]] = []
        self._flushed = 0
        self._lock = threading.Lock()
        self._earlier_events = earlier_events
        self._target: str | None = None
        self._served_nonce: str | None = None
        self.delivered = 0
        self.undelivered = 0
        if subscriber is not None:
            self.retarget(subscriber)

    def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Number the event, keep it, and send it to the current subscriber if any."""
        with self._lock:
            self.seq += 1
            payload = {"event": event["event"], "seq": self.seq, **{k: v for k, v in event.items() if k != "event"}}
            self.events.append(payload)
            self._deliver(payload)
            return payload

    def retarget(self, subscriber: Subscriber | None) -> None:
        """Switch to a new subscriber, first replaying what it asked for (resume)."""
        with self._lock:
            if subscriber is None:
                self._target = None
                return
            if subscriber.nonce == self._served_nonce:
                return
            self._served_nonce = subscriber.nonce
            self._target = subscriber.connection_id
            if subscriber.replay_after is not None:
                after = subscriber.replay_after
                if after < self.first_seq - 1 and self._earlier_events is not None:
                    for payload in self._earlier_events(after):
                        self._deliver(payload)
                for payload in self.events:
                    if payload["seq"] > after:
                        self._deliver(payload)

    @property
    def served_nonce(self) -> str | None:
        return self._served_nonce

    def take_unflushed(self) -> list[dict[str, Any]]:
        """Events not yet written to the event log (for the next chunk)."""
        with self._lock:
            chunk = self.events[self._flushed :]
            self._flushed = len(self.events)
            return chunk

    def _deliver(self, payload: dict[str, Any]) -> None:
        if self._target is None:
            self.undelivered += 1
            return
        try:
            delivered = self.sender.send(self._target, payload)
        except Exception:  # noqa: BLE001 - a send failure must never break the turn
            log.exception("sending event %s failed", payload.get("seq"))
            delivered = False
        if delivered:
            self.delivered += 1
        else:
            # The client went away (GoneException): keep going; it can resume later.
            self._target = None
            self.undelivered += 1
