"""Per-user quotas: live sessions (USER_MAX_SESSIONS), messages a minute (USER_MESSAGES_PER_MINUTE)
and what a day may cost (USER_DAILY_BUDGET_USD, checked against `usage`).

Each counter is one small JSON document under `users/{userId}/quota/`, changed by a conditional
read-modify-write (`counters.update_document`): when many Lambdas count at once, no increment is
lost and no limit is passed. The operator's overrides
(`limits.json`) are cached per process for `LIMITS_TTL_SECONDS`, and dropped at once by a PUT
in the same process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.config import QuotaSettings
from chalicelib.errors import PayloadTooLarge, QuotaExceeded
from chalicelib.services.counters import read_document, update_document
from chalicelib.services.models import ApiModel
from chalicelib.storage import ObjectNotFound, ObjectStore, layout

LIMITS_TTL_SECONDS = 30.0
# A slot taken by a setup that never confirmed it (its process died) is freed after this long.
UNCONFIRMED_SLOT_SECONDS = 120.0


class LimitsUpdate(ApiModel):
    """PUT /users/{userId}/limits: a number overrides the setting, null makes it unlimited for
    this user, and a field left out keeps the server's setting."""

    max_sessions: int | None = Field(default=None, ge=1, le=100_000)
    messages_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    daily_budget_usd: float | None = Field(default=None, gt=0, le=1_000_000)
    storage_mb: int | None = Field(default=None, ge=1, le=10_000_000)


class UserLimits(ApiModel):
    """The limits in effect for one user (null: unlimited), and which of them are overrides."""

    user_id: str
    max_sessions: int | None
    messages_per_minute: int | None
    daily_budget_usd: float | None
    storage_mb: int | None
    overridden: list[str]


class _Overrides(BaseModel):
    model_config = ConfigDict(extra="ignore")
    values: dict[str, int | float | None] = {}


class _Slot(BaseModel):
    """One counted session: `ready` once its sandbox was made (until then, liveness says nothing)."""

    model_config = ConfigDict(extra="ignore")
    since: datetime
    ready: bool = False


class _Sessions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    live: dict[str, _Slot] = {}


class _Messages(BaseModel):
    model_config = ConfigDict(extra="ignore")
    window: str = ""
    count: int = 0


FIELDS = {"max_sessions": "USER_MAX_SESSIONS", "messages_per_minute": "USER_MESSAGES_PER_MINUTE",
          "daily_budget_usd": "USER_DAILY_BUDGET_USD", "storage_mb": "USER_STORAGE_MB"}


def daily_budget_reached(user_id: str, budget: float) -> QuotaExceeded:
    """The refusal of a message once the user's day has cost USER_DAILY_BUDGET_USD."""
    now = time.time()
    return QuotaExceeded(
        f"User {user_id!r} has spent today's budget (USER_DAILY_BUDGET_USD={budget:g}): messages resume at 00:00 UTC, "
        "or the operator can raise the limit (PUT /users/{userId}/limits).",
        retry_after=int(86_400 - now % 86_400) + 1, code="daily_budget_reached",
    )


class QuotasService:
    """Reads each user's limits and keeps their counters."""

    def __init__(self, settings: QuotaSettings, store: ObjectStore, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, _Overrides]] = {}

    # -- limits ----------------------------------------------------------------------------

    def limits(self, user_id: str) -> UserLimits:
        """The limits in effect for `user_id`."""
        overrides = self._overrides(user_id)
        values: dict[str, Any] = {name: getattr(self.settings, name) for name in FIELDS}
        values.update({k: v for k, v in overrides.values.items() if k in FIELDS})
        return UserLimits(user_id=user_id, overridden=sorted(k for k in overrides.values if k in FIELDS), **values)

    def set_limits(self, user_id: str, update: LimitsUpdate) -> UserLimits:
        """Replace the user's overrides with the fields `update` names."""
        chosen = {name: getattr(update, name) for name in update.model_fields_set}
        self.store.put(layout.limits_key(user_id), _Overrides(values=chosen).model_dump_json().encode(),
                       content_type="application/json")
        with self._lock:
            self._cache.pop(user_id, None)
        return self.limits(user_id)

    def _overrides(self, user_id: str) -> _Overrides:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(user_id)
        if cached is not None and now - cached[0] < LIMITS_TTL_SECONDS:
            return cached[1]
        try:
            found = _Overrides.model_validate_json(self.store.get(layout.limits_key(user_id)).body)
        except (ObjectNotFound, ValidationError):
            found = _Overrides()
        with self._lock:
            self._cache[user_id] = (now, found)
        return found

    # -- live sessions ---------------------------------------------------------------------

    def reserve_session(self, user_id: str, session_id: str, is_live: Callable[[str], bool]) -> bool:
        """Count `session_id` among the user's live sessions; QuotaExceeded past USER_MAX_SESSIONS.

        Returns whether a slot was taken now (False: unlimited, or the session held one); the
        caller confirms it (`confirm_session`) once the sandbox exists. When the count is full,
        sessions whose sandbox has gone (reaped, destroyed behind the API) are dropped first:
        `is_live` is asked about each confirmed one; an unconfirmed one goes after two minutes.
        """
        limit = self.limits(user_id).max_sessions
        if limit is None:
            return False
        key = layout.quota_counter_key(user_id, "sessions")
        current = read_document(self.store, key, _Sessions)
        dead: set[str] = set()
        if current is not None and session_id not in current[0].live and len(current[0].live) >= limit:
            now = datetime.now(timezone.utc)
            dead = {s for s, slot in current[0].live.items()
                    if (slot.ready and not is_live(s))
                    or (not slot.ready and (now - slot.since).total_seconds() > UNCONFIRMED_SLOT_SECONDS)}

        def add(doc: _Sessions) -> bool:
            for gone in dead:
                doc.live.pop(gone, None)
            if session_id in doc.live:
                return False
            if len(doc.live) >= limit:
                raise QuotaExceeded(
                    f"User {user_id!r} has {len(doc.live)} live sessions, the most allowed (USER_MAX_SESSIONS={limit}): "
                    "end one with DELETE /sandbox/{sessionId}, or ask the operator to raise the limit.",
                    retry_after=60,
                )
            doc.live[session_id] = _Slot(since=datetime.now(timezone.utc))
            return True

        return update_document(self.store, key, _Sessions, add)

    def confirm_session(self, user_id: str, session_id: str) -> None:
        """The session's sandbox exists: from now on its slot is freed when the sandbox goes."""

        def ready(doc: _Sessions) -> None:
            slot = doc.live.get(session_id)
            if slot is not None:
                slot.ready = True

        update_document(self.store, layout.quota_counter_key(user_id, "sessions"), _Sessions, ready)

    def release_session(self, user_id: str, session_id: str) -> None:
        """Stop counting `session_id` (its sandbox was destroyed)."""
        key = layout.quota_counter_key(user_id, "sessions")
        if read_document(self.store, key, _Sessions) is None:
            return

        def drop(doc: _Sessions) -> bool:
            return doc.live.pop(session_id, None) is not None

        update_document(self.store, key, _Sessions, drop)

    # -- storage ---------------------------------------------------------------------------

    def check_storage(self, user_id: str, adding: int, stored_bytes: Callable[[str], int]) -> None:
        """Refuse (413 `storage_quota_exceeded`) an upload of `adding` bytes that would take the
        user past USER_STORAGE_MB; `stored_bytes(user_id)` measures what they hold (a listing),
        asked only when a limit is in effect."""
        limit_mb = self.limits(user_id).storage_mb
        if limit_mb is None:
            return
        held = stored_bytes(user_id)
        if held + adding > limit_mb * 1024 * 1024:
            raise PayloadTooLarge(
                f"User {user_id!r} holds {held} bytes; {adding} more would pass USER_STORAGE_MB={limit_mb}: "
                "delete skills, conversations or sessions' files first, or ask the operator to raise the limit.",
                code="storage_quota_exceeded",
            )

    # -- messages --------------------------------------------------------------------------

    def count_message(self, user_id: str) -> None:
        """Count one message; QuotaExceeded past USER_MESSAGES_PER_MINUTE in this UTC minute."""
        limit = self.limits(user_id).messages_per_minute
        if limit is None:
            return
        now = self.clock()
        window = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M")
        retry_after = int(60 - now % 60) + 1

        def add(doc: _Messages) -> None:
            if doc.window != window:
                doc.window, doc.count = window, 0
            if doc.count >= limit:
                raise QuotaExceeded(
                    f"User {user_id!r} sent {doc.count} messages this minute, the most allowed "
                    f"(USER_MESSAGES_PER_MINUTE={limit}): retry in {retry_after} s.",
                    retry_after=retry_after,
                )
            doc.count += 1

        update_document(self.store, layout.quota_counter_key(user_id, "messages"), _Messages, add)
