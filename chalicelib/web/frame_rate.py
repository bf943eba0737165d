"""Per-connection frame rate: WS_FRAMES_PER_SECOND, checked before a frame does any work.

A token bucket per connection, refilled at the rate and holding as many frames as the rate (a
burst of one second's worth). A frame past it is refused: the client is told once a second (an
`error` event, code `frame_rate_exceeded`), the other refused frames are dropped without a
reply, so a flood costs the server next to nothing. A connection that keeps sending after being
told (FLOOD_SECONDS' worth of frames refused in a row) is closed.

The buckets live in the process: on the local gateway that is every frame of a connection; on
AWS it is every frame a warm Lambda container handles for it, so a connection gets at most the
rate per container it reaches (API Gateway's stage throttling is the account-wide backstop).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

# A connection refused this many seconds' worth of frames in a row is closed.
FLOOD_SECONDS = 5
# The close code the local gateway closes a flooding connection with (1008: policy violation),
# reason `frame_rate_exceeded`. API Gateway's DeleteConnection chooses its own code.
FLOOD_CLOSE_CODE = 1008
# Buckets kept at most (least recently used forgotten first): bounded memory whatever connects.
MAX_TRACKED = 10_000


class Verdict(Enum):
    """What to do with one frame."""

    ADMIT = "admit"
    REFUSE_AND_TELL = "refuse_and_tell"  # refused: send the `frame_rate_exceeded` error
    DROP = "drop"  # refused, already told within the second: no reply
    CLOSE = "close"  # a flood: refused, and the connection is closed


@dataclass
class _Bucket:
    tokens: float
    at: float
    told_at: float = float("-inf")
    refused_in_a_row: int = 0


def refusal(per_second: int) -> dict[str, Any]:
    """The `error` event a refused frame gets (once a second)."""
    return {
        "event": "error", "seq": 0, "code": "frame_rate_exceeded", "retryAfter": 1,
        "message": (f"Too many frames: this connection may send {per_second} a second (WS_FRAMES_PER_SECOND). "
                    "Frames past that are not run; a connection that keeps sending them is closed."),
    }


class FrameRateLimiter:
    """Token buckets by connection id (thread-safe: the local gateway runs frames on a pool)."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, connection_id: str) -> Verdict:
        """Take one frame from the connection's bucket."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.pop(connection_id, None) or _Bucket(tokens=float(self.per_second), at=now)
            self._buckets[connection_id] = bucket
            while len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
            bucket.tokens = min(float(self.per_second), bucket.tokens + (now - bucket.at) * self.per_second)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                bucket.refused_in_a_row = 0
                return Verdict.ADMIT
            bucket.refused_in_a_row += 1
            flood = FLOOD_SECONDS * self.per_second
            if bucket.refused_in_a_row >= flood:
                return Verdict.CLOSE if bucket.refused_in_a_row == flood else Verdict.DROP
            if now - bucket.told_at >= 1:
                bucket.told_at = now
                return Verdict.REFUSE_AND_TELL
            return Verdict.DROP

    def forget(self, connection_id: str) -> None:
        """The connection is gone."""
        with self._lock:
            self._buckets.pop(connection_id, None)


_limiters: dict[int, FrameRateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter(per_second: int) -> FrameRateLimiter:
    """The process's limiter for this rate (one per rate: tests change the setting)."""
    with _limiters_lock:
        found = _limiters.get(per_second)
        if found is None:
            found = _limiters[per_second] = FrameRateLimiter(per_second)
        return found
