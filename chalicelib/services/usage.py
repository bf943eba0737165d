"""Usage per user and UTC day, metered from each turn's result: `GET /users/{userId}/usage`.

Every turn writes one record of its own, an empty object whose key carries its numbers:
`users/{userId}/usage/{day}/{sessionId}/{recordId}.{turns}.{in}.{out}.{cacheRead}.{cacheCreation}.{costNanoUsd}`.
One blind PutObject per turn (no read, no race to lose: each turn has its own key, and a retried
write rewrites the same one), and a day is one listing of its prefix, which returns every
record's numbers without reading any body, so many runners metering at once add up to the
exact sum. The day's `costUsd` is what USER_DAILY_BUDGET_USD is checked against.

Days metered before the records existed are one document, `users/{userId}/usage/{day}.json`
(changed by a conditional read-modify-write): the same listing finds it, and it is read and
added, so both layouts count.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict

from chalicelib.errors import BadRequest
from chalicelib.services.counters import read_document
from chalicelib.services.models import ApiModel
from chalicelib.services.workspace_snapshots import OWNERS, stored_bytes
from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.listing import iter_all

MAX_DAYS = 92
MAX_SESSIONS_LISTED = 1000  # a day's distinct sessions kept for the count (the count stops there)
UNPRICED = "x"  # a record's cost when the model's price is not known


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

    def record(self, user_id: str, session_id: str, used: TurnUsage, record_id: str | None = None) -> None:
        """Add one message's turn to today's usage: one PutObject of its own record (`record_id`,
        the turn's id, makes a retried write land on the same key)."""
        cost = UNPRICED if used.cost_usd is None else str(round(used.cost_usd * 1e9))
        numbers = [used.turns, used.input_tokens, used.output_tokens, used.cache_read_tokens, used.cache_creation_tokens]
        name = ".".join([record_id or uuid.uuid4().hex, *(str(n) for n in numbers), cost])
        key = f"{_day_prefix(user_id, today(self.clock))}/{session_id}/{name}"
        self.store.put(key, b"", content_type="application/octet-stream")

    def spent_today(self, user_id: str) -> float:
        """Today's metered cost (USD) of the user (one listing)."""
        return self._day(user_id, today(self.clock)).cost_usd

    def report(self, user_id: str, start: str | None, end: str | None) -> UsageReport:
        """Each UTC day from `start` to `end` (default: today), and the storage the user holds now."""
        last = _day(end, "to") if end else date.fromisoformat(today(self.clock))
        first = _day(start, "from") if start else last
        if first > last or (last - first).days >= MAX_DAYS:
            raise BadRequest(f"from must not be after to, and the range at most {MAX_DAYS} days.", code="invalid_range")
        names = [(first + timedelta(days=offset)).isoformat() for offset in range((last - first).days + 1)]
        with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            totals = list(pool.map(lambda name: self._day(user_id, name), names))
        days = [DayUsage(date=name, messages=d.messages, turns=d.turns, input_tokens=d.input_tokens,
                         output_tokens=d.output_tokens, cache_read_tokens=d.cache_read_tokens,
                         cache_creation_tokens=d.cache_creation_tokens, cost_usd=d.cost_usd,
                         unpriced_messages=d.unpriced_messages, sessions=len(d.sessions))
                for name, d in zip(names, totals, strict=True)]
        return UsageReport(user_id=user_id, days=days, total_cost_usd=round(sum(d.cost_usd for d in days), 9),
                           storage_bytes=self.storage_bytes(user_id))

    def _day(self, user_id: str, name: str) -> _Day:
        """One day's totals: its records (one listing) plus the document of the older layout."""
        prefix = _day_prefix(user_id, name)
        legacy = layout.usage_key(user_id, name)
        day = _Day()
        nanos = 0
        for info in iter_all(self.store, prefix):
            if info.key == legacy:
                found = read_document(self.store, legacy, _Day)
                if found is not None:
                    old = found[0]
                    day.messages += old.messages
                    day.turns += old.turns
                    day.input_tokens += old.input_tokens
                    day.output_tokens += old.output_tokens
                    day.cache_read_tokens += old.cache_read_tokens
                    day.cache_creation_tokens += old.cache_creation_tokens
                    day.unpriced_messages += old.unpriced_messages
                    nanos += round(old.cost_usd * 1e9)
                    day.sessions = [*day.sessions, *(s for s in old.sessions if s not in day.sessions)]
                continue
            parsed = _parse_record(info.key[len(prefix):])
            if parsed is None:
                continue
            session_id, numbers, cost = parsed
            day.messages += 1
            day.turns += numbers[0]
            day.input_tokens += numbers[1]
            day.output_tokens += numbers[2]
            day.cache_read_tokens += numbers[3]
            day.cache_creation_tokens += numbers[4]
            if cost is None:
                day.unpriced_messages += 1
            else:
                nanos += cost
            if session_id not in day.sessions and len(day.sessions) < MAX_SESSIONS_LISTED:
                day.sessions.append(session_id)
        # Summed in integer nano-dollars: exact whatever the order the records are listed in.
        day.cost_usd = round(nanos / 1e9, 9)
        return day

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


def _day_prefix(user_id: str, name: str) -> str:
    """`users/{u}/usage/{day}`: the prefix of the day's records (`/...`) and of its older document (`.json`)."""
    return layout.usage_key(user_id, name)[: -len(".json")]


def _parse_record(rest: str) -> tuple[str, list[int], int | None] | None:
    """(session id, [turns, input, output, cache read, cache creation], cost in nano-USD or None)
    from a record key's tail `/{sessionId}/{recordId}.{numbers}.{cost}`; None when it is not one."""
    parts = rest.strip("/").split("/")
    if len(parts) != 2:
        return None
    fields = parts[1].split(".")
    if len(fields) != 7:
        return None
    try:
        numbers = [int(f) for f in fields[1:6]]
        cost = None if fields[6] == UNPRICED else int(fields[6])
    except ValueError:
        return None
    return parts[0], numbers, cost
