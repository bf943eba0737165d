"""Usage per user and UTC day, metered from each turn's result: `GET /users/{userId}/usage`.

Every turn adds its numbers to `users/{userId}/usage/{day}.json` with one conditional
read-modify-write (a GetObject and a PutObject per turn; more only on a lost race), so many
runners metering at once add up to the exact sum. The day's `costUsd` is what
USER_DAILY_BUDGET_USD is checked against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict

from chalicelib.errors import BadRequest
from chalicelib.services.counters import read_document, update_document
from chalicelib.services.models import ApiModel
from chalicelib.services.workspace_snapshots import OWNERS, stored_bytes
from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.base import iter_all

MAX_DAYS = 92
MAX_SESSIONS_LISTED = 1000  # a day's distinct sessions kept for the count (the count stops there)


class _Day(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: int = 0
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_messages: int = 0
    sessions: list[str] = []


class TurnUsage(BaseModel):
    """What one message's turn used (from its `result`)."""

    turns: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cost_usd: float | None


class DayUsage(ApiModel):
    date: str
    messages: int
    turns: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cost_usd: float
    unpriced_messages: int
    sessions: int


class UsageReport(ApiModel):
    user_id: str
    days: list[DayUsage]
    total_cost_usd: float
    storage_bytes: int


def today(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), timezone.utc).strftime("%Y-%m-%d")


class UsageService:
    """Meters turns into daily documents and reports them."""

    def __init__(self, store: ObjectStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def record(self, user_id: str, session_id: str, used: TurnUsage) -> None:
        """Add one message's turn to today's usage (one conditional write)."""

        def add(day: _Day) -> None:
            day.messages += 1
            day.turns += used.turns
            day.input_tokens += used.input_tokens
            day.output_tokens += used.output_tokens
            day.cache_read_tokens += used.cache_read_tokens
            day.cache_creation_tokens += used.cache_creation_tokens
            if used.cost_usd is None:
                day.unpriced_messages += 1
            else:
                day.cost_usd = round(day.cost_usd + used.cost_usd, 9)
            if session_id not in day.sessions and len(day.sessions) < MAX_SESSIONS_LISTED:
                day.sessions.append(session_id)

        update_document(self.store, layout.usage_key(user_id, today(self.clock)), _Day, add)

    def spent_today(self, user_id: str) -> float:
        """Today's metered cost (USD) of the user."""
        found = read_document(self.store, layout.usage_key(user_id, today(self.clock)), _Day)
        return found[0].cost_usd if found is not None else 0.0

    def report(self, user_id: str, start: str | None, end: str | None) -> UsageReport:
        """Each UTC day from `start` to `end` (default: today), and the storage the user holds now."""
        last = _day(end, "to") if end else date.fromisoformat(today(self.clock))
        first = _day(start, "from") if start else last
        if first > last or (last - first).days >= MAX_DAYS:
            raise BadRequest(f"from must not be after to, and the range at most {MAX_DAYS} days.", code="invalid_range")
        days = []
        for offset in range((last - first).days + 1):
            name = (first + timedelta(days=offset)).isoformat()
            found = read_document(self.store, layout.usage_key(user_id, name), _Day)
            d = found[0] if found is not None else _Day()
            days.append(DayUsage(date=name, messages=d.messages, turns=d.turns, input_tokens=d.input_tokens,
                                 output_tokens=d.output_tokens, cache_read_tokens=d.cache_read_tokens,
                                 cache_creation_tokens=d.cache_creation_tokens, cost_usd=d.cost_usd,
                                 unpriced_messages=d.unpriced_messages, sessions=len(d.sessions)))
        return UsageReport(user_id=user_id, days=days, total_cost_usd=round(sum(d.cost_usd for d in days), 9),
                           storage_bytes=self.storage_bytes(user_id))

    def storage_bytes(self, user_id: str) -> int:
        """Skills, conversations, settings and the user's workspace snapshots, now."""
        total = sum(o.size for o in iter_all(self.store, layout.user_prefix(user_id)))
        for marker in iter_all(self.store, f"{OWNERS}{user_id}/"):
            total += stored_bytes(self.store, marker.key.rsplit("/", 1)[1], user_id)
        return total


def _day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"Query parameter {name}={value!r} must be a date, YYYY-MM-DD (UTC).", code=f"invalid_{name}") from None
