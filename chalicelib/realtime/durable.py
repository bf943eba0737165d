"""Storage writes of a turn, retried through an outage.

Both the turn runner and the permission desk it waits on write the session state mid-turn; a
write lost to a storage blip must not end a turn that a few seconds' patience would save.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from chalicelib.errors import AppError
from chalicelib.storage import StorageFull, StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Pauses between attempts of a storage call that failed (6 s in all, plus botocore's own
#: retries inside each attempt), then the turn ends.
STORAGE_BACKOFF = (0.5, 1.5, 4.0)


class TurnStorageFailed(AppError):
    """Storage stayed unavailable through every retry of a turn's write."""

    def __init__(self, what: str, exc: Exception) -> None:
        super().__init__(
            f"Storage failed while {what} and did not recover after {len(STORAGE_BACKOFF)} retries over "
            f"{sum(STORAGE_BACKOFF):.0f} s ({exc}). The turn stopped; what was saved before is kept. "
            "Send your message again once storage is back.",
            code="storage_unavailable",
        )


class TurnStorageFull(AppError):
    """The store refused a turn's write for lack of space: the turn ends at once."""

    def __init__(self, what: str, exc: StorageFull) -> None:
        super().__init__(
            f"Storage is full (or read-only) and refused the write while {what} ({exc}). The turn stopped; what was "
            "saved before is kept. Free space, then send your message again.",
            code="storage_full",
        )


def durably(action: Callable[[], T], what: str, backoff: tuple[float, ...] = STORAGE_BACKOFF) -> T:
    """Run a storage call, retrying an outage with growing pauses (botocore's own retries
    cover a blip of a fraction of a second; these ride out several seconds). A full store is
    not retried: the turn ends at once with `storage_full`."""
    for attempt, pause in enumerate((*backoff, None)):
        try:
            return action()
        except StorageFull as exc:
            raise TurnStorageFull(what, exc) from exc
        except StorageUnavailable as exc:
            if pause is None:
                raise TurnStorageFailed(what, exc) from exc
            log.warning("storage failed while %s (attempt %d), retrying in %.1f s: %s", what, attempt + 1, pause, exc)
            time.sleep(pause)
    raise AssertionError("unreachable")

