"""Erasing a user: everything under `users/{userId}/` goes."""

from __future__ import annotations

from typing import Literal

from chalicelib.services.models import ApiModel
from chalicelib.services.session_owners import SessionOwners
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots  # noqa: I001 - apart, for merging
from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.listing import iter_all


class UserErased(ApiModel):
    status: Literal["deleted"] = "deleted"
    user_id: str
    objects_deleted: int


class UsersService:
    def __init__(self, store: ObjectStore, snapshots: WorkspaceSnapshots | None = None) -> None:
        self.store = store
        self.snapshots = snapshots

    def erase(self, user_id: str) -> UserErased:
        """Delete every object of the user (batched deletes), their sessions' workspace
        snapshots and ownership claims, and say how many went."""
        keys = [o.key for o in iter_all(self.store, layout.user_prefix(user_id))]
        deleted = self.store.delete_many(keys) if keys else 0
        # Before the markers that find them go (with the snapshots): the user's session ids are free again.
        deleted += SessionOwners(self.store).release_for_user(user_id)
        if self.snapshots is not None:
            deleted += self.snapshots.delete_for_user(user_id)
        return UserErased(user_id=user_id, objects_deleted=deleted)
