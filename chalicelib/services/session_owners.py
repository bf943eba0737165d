"""Who a session id belongs to, for good: `sessions/{sessionId}/owner.json`.

The first /setup of a session id claims it with a conditional create (If-None-Match: *), so two
users racing for a new id cannot both win. The claim outlives the sandbox and the session
record (DELETE /sandbox keeps it, as it keeps the workspace snapshot), so an id never changes
hands while anything of it remains: not its sandbox, its snapshot, nor a turn still winding
down. Erasing the owner (DELETE /users/{userId}) releases it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import ValidationError

from chalicelib.errors import Conflict
from chalicelib.services.models import ApiModel
from chalicelib.services.workspace_snapshots import OWNERS, owner_marker_key
from chalicelib.storage import ObjectNotFound, ObjectStore, PreconditionFailed, layout
from chalicelib.storage.base import get_many
from chalicelib.storage.listing import iter_all

OWNER_RECORD = "owner.json"


class SessionOwner(ApiModel):
    """What `owner.json` holds."""

    user_id: str
    claimed_at: datetime


def owner_key(session_id: str) -> str:
    return layout.session_key(session_id, OWNER_RECORD)


def owned_by_another_user(session_id: str) -> Conflict:
    return Conflict(
        f"Session {session_id!r} belongs to another user: choose a new sessionId.",
        code="session_owned_by_another_user",
    )


class SessionOwners:
    """Claims, reads and releases session ownership."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def owner(self, session_id: str) -> str | None:
        """The user who claimed the session id, or None (never claimed, or released)."""
        try:
            body = self.store.get(owner_key(session_id)).body
        except ObjectNotFound:
            return None
        try:
            return SessionOwner.model_validate_json(body).user_id
        except ValidationError:
            return None

    def claim(self, session_id: str, user_id: str) -> bool:
        """Make `user_id` the session's owner (True: claimed now), or confirm it is (False);
        409 when another user is. A new claim needs `mark` too (setup writes it in parallel
        with the session record)."""
        record = SessionOwner(user_id=user_id, claimed_at=datetime.now(timezone.utc))
        try:
            self.store.put(owner_key(session_id), record.model_dump_json(by_alias=True).encode(),
                           content_type="application/json", if_none_match=True)
        except PreconditionFailed:
            if self.owner(session_id) != user_id:
                raise owned_by_another_user(session_id) from None
            return False
        return True

    def mark(self, session_id: str, user_id: str) -> None:
        """The marker that lets erasing the user find the session without listing every session."""
        self.store.put(owner_marker_key(user_id, session_id), b"", content_type="text/plain")

    def release_for_user(self, user_id: str) -> int:
        """Delete the ownership records of the user's sessions (erasure); return how many went."""
        markers = [o.key for o in iter_all(self.store, f"{OWNERS}{user_id}/")]
        keys = [owner_key(m.rsplit("/", 1)[1]) for m in markers]
        found = get_many(self.store, keys)
        mine = []
        for key, stored in found.items():
            try:
                if stored is not None and SessionOwner.model_validate_json(stored.body).user_id == user_id:
                    mine.append(key)
            except ValidationError:
                continue
        return self.store.delete_many(mine) if mine else 0
