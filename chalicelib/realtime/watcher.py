"""The running turn's watcher: polls the session state, renews the lease, follows reconnects.

It is given what it needs (the state cursor, the lease, the stream, its timings) rather than
the runner, and reports back only through its flags: `interrupted` (stop as soon as the loop
can) and `lost` (another runner took the turn over; this one must write nothing more).

A poll is a HEAD of `state.json`: its body (a few KB, whatever the skill count: the agent's
memory is not in it) is read only when its ETag moved, that is when something happened (a
message queued behind, a tab subscribed, an interrupt, a takeover).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from chalicelib.realtime.lease import Lease, LeaseLost
from chalicelib.realtime.state import SEQ_BLOCK, SessionState, StateCursor, Subscriber, utcnow
from chalicelib.realtime.stream import TurnStream

log = logging.getLogger(__name__)


class TurnWatcher:
    """Polls `state.json` every `poll_interval` during a turn and renews the lease every `renew_every`."""

    def __init__(self, cursor: StateCursor, lease: Lease, stream: TurnStream, *, lease_duration: timedelta,
                 renew_every: float, poll_interval: float, on_subscribers: Callable[[list[Subscriber]], None]) -> None:
        self.cursor = cursor
        self.lease = lease
        self.stream = stream
        self.lease_duration = lease_duration
        self.renew_every = renew_every
        self.poll_interval = poll_interval
        self.on_subscribers = on_subscribers
        self.interrupted = threading.Event()
        # Set when another runner took the turn over (this one stalled past its lease).
        self.lost = threading.Event()
        # Messages queued behind this turn, as of the last poll (so its workspace save can wait).
        self.queued_behind = 0
        self._stop = threading.Event()
        # Run in a copy of the turn's context: its log lines carry the turn's ids.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        name=f"watch-{lease.session_id}", daemon=True)
        self._last_renewal = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        interval = min(self.poll_interval, self.renew_every)
        while not self._stop.wait(interval):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a failed poll is retried at the next tick
                log.exception("polling state of session %s failed", self.lease.session_id)

    def _poll(self) -> None:
        if time.monotonic() - self._last_renewal >= self.renew_every:
            state: SessionState | None = self._renew()
        else:
            state = self.cursor.refresh()
        if state is None:
            # The state went away under a running turn: DELETE /sandbox destroyed the session.
            # Stop at the next step, and leave the workspace alone (as after a takeover).
            self.lost.set()
            self.interrupted.set()
            return
        self.queued_behind = len(state.queue)
        if not self.lease.holds(state):
            self.lost.set()
        if self.lost.is_set() or state.turn is None or state.turn.interrupt:
            # Interrupted, or the turn was taken over: stop as soon as the loop can.
            self.interrupted.set()
        if not self.lost.is_set() and not self.stream.serves(state.subscribers):
            self.on_subscribers(state.subscribers)

    def _renew(self) -> SessionState | None:
        """Extend the lease and the seq high-water mark in one conditional write (none at all
        once the lease is lost)."""
        mark = self.stream.seq + SEQ_BLOCK

        def renew(s: SessionState) -> None:
            self.lease.require(s, "renewing its lease")
            assert s.turn is not None
            now = utcnow()
            s.turn.heartbeat_at = now
            s.turn.lease_until = now + self.lease_duration
            s.seq_ceiling = max(s.seq_ceiling, mark)

        try:
            _, state = self.cursor.update(renew)
        except LeaseLost as exc:
            log.warning("%s", exc.message)
            self.lost.set()
            self.interrupted.set()
            return None
        self._last_renewal = time.monotonic()
        self.stream.raise_ceiling(mark)
        return state
