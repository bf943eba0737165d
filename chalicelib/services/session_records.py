"""Session records: `sessions/{sessionId}/session.json`, who owns a session and where it runs.

Read with the ETag a rewrite must match; written conditionally, so two setups of one session
cannot both win (the loser is told `concurrent_setup`). A record that does not parse is set
aside under `corrupt/` and removed, so the next setup writes a fresh one instead of refusing
forever.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import ValidationError

from chalicelib.errors import Conflict
from chalicelib.services.models import ApiModel
from chalicelib.services.skill_index import SkillIndex
from chalicelib.services.skill_mount import SetupMethod
from chalicelib.storage import ObjectNotFound, ObjectStore, PreconditionFailed, layout
from chalicelib.storage.quarantine import set_aside

log = logging.getLogger(__name__)


class SessionRecord(ApiModel):
    """What `sessions/{sessionId}/session.json` holds: who owns the session and where it runs."""

    session_id: str
    user_id: str
    token_sha256: str
    sandbox_kind: str
    setup_method: SetupMethod
    created_at: datetime
    last_active_at: datetime
    # Built from the bodies setup read, so a message never reads every skill to list them.
    skill_index: SkillIndex | None = None
    # The sandbox host the session was placed on (a fleet of hosts); None for local sandboxes.
    sandbox_host: str | None = None
    # Whether the session is counted among its user's live sessions (USER_MAX_SESSIONS), so
    # that destroying it frees the slot without reading the counter when nothing was counted.
    quota_slot: bool = False


class SessionRecords:
    """Reads and writes session records in one store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def load(self, session_id: str) -> tuple[SessionRecord, str] | None:
        """(record, etag), or None when there is none or it was unreadable (and set aside)."""
        found = self.read(session_id)
        return None if isinstance(found, str) else found

    def read(self, session_id: str) -> tuple[SessionRecord, str] | str | None:
        """(record, etag); None when there is none; for one that does not parse, the key it was
        set aside as (under corrupt/): it is removed, so the next /setup writes a fresh one
        instead of refusing forever as a concurrent setup."""
        key = layout.session_key(session_id)
        try:
            stored = self.store.get(key)
        except ObjectNotFound:
            return None
        try:
            return SessionRecord.model_validate_json(stored.body), stored.info.etag
        except ValidationError:
            aside = set_aside(self.store, key, stored.body, "it does not parse as a session record")
            self.store.delete(key)
            return aside

    def save(self, record: SessionRecord, etag: str | None) -> None:
        """Write the record if it is still the one read (`etag`; None: there was none), else 409."""
        try:
            self.store.put(
                layout.session_key(record.session_id),
                record.model_dump_json(by_alias=True).encode(),
                content_type="application/json",
                if_match=etag,
                if_none_match=etag is None,
            )
        except PreconditionFailed:
            raise Conflict(
                f"Session {record.session_id!r} was set up concurrently by another request: retry.",
                code="concurrent_setup",
            ) from None

    def note_host(self, session_id: str, host: str) -> None:
        """Record a new host after a move, so every process routes the session there."""
        found = self.load(session_id)
        if found is None or found[0].sandbox_host == host:
            return
        record = found[0].model_copy(update={"sandbox_host": host})
        try:
            self.store.put(layout.session_key(session_id), record.model_dump_json(by_alias=True).encode(),
                           content_type="application/json", if_match=found[1])
        except PreconditionFailed:
            log.warning("session %s record changed while noting its new host %s", session_id, host)
