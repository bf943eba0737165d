"""What a turn reads before its first model request, read in parallel: one round trip.

The conversation, the user's settings and (unless this process has it) the session record's
skill index are independent objects, so they are fetched at once. With the turn handed over
by the edge (handoff.py) these are the only storage round trips between the runner's start
and the model request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.errors import AppError
from chalicelib.realtime.agent_memory import SKILL_INDEXES, SkillIndexCache
from chalicelib.realtime.durable import durably
from chalicelib.realtime.transcript import Transcript
from chalicelib.services.skill_index import SkillIndex
from chalicelib.services.user_settings import UserSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnInputs:
    """The stored history (cut-off calls answered), the user's settings (None: the agent reads
    them) and the skill index to start from (None: built from the sandbox)."""

    history: list[dict[str, Any]]
    prefs: UserSettings | None
    skill_index: SkillIndex | None


def read_inputs(transcript: Transcript, *, session_id: str, user_id: str,
                read_settings: Callable[[str], UserSettings] | None,
                read_skill_index: Callable[[str], SkillIndex | None],
                skills_built_at: datetime | None, cache: SkillIndexCache = SKILL_INDEXES) -> TurnInputs:
    """Read the turn's inputs at once. Raises ConversationUnreadable (kept, never overwritten)
    and the conversation's storage failure; a failed record read only costs the index."""
    cached = cache.get(session_id, skills_built_at)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="turn-start") as pool:
        settings_f = (pool.submit(durably, lambda: read_settings(user_id), "reading the user's settings")
                      if read_settings is not None else None)
        index_f = pool.submit(durably, lambda: read_skill_index(session_id), "reading the session's skill index") \
            if cached is None else None
        history = transcript.load()
        prefs = settings_f.result() if settings_f is not None else None
        index = cached
        if index_f is not None:
            try:
                index = index_f.result()
            except AppError as exc:
                log.warning("the skill index of session %s was not read (%s); it is built from the sandbox",
                            session_id, exc.message)
            if index is not None:
                cache.put(session_id, index)
    return TurnInputs(history, prefs, index)
