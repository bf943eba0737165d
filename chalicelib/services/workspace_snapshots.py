"""Durable workspaces: a session's /workspace (without the skills) saved to the bucket as one
compressed archive, and restored whenever its sandbox has to be made again.

Layout:

    sessions/{sessionId}/workspace/{userId}.tar.gz   the latest archive (one object per session and owner)
    workspace-owners/{userId}/{sessionId}            empty marker, so erasing a user finds them

The owner is in the key because a destroyed session's id can be set up again by another user:
the new owner's sandbox must never be restored from, and its erasure never remove, the old
owner's files.

Why one object and no pointer: a PutObject is atomic on S3 and R2 (a reader sees the whole old
archive or the whole new one, never a part; the embedded store writes a temp file and renames),
so the switch a pointer would give is already there, and a pointer would double the Class A
cost of every save. Whether the workspace changed is decided by comparing the archive's MD5
with the stored object's ETag (a single-part PutObject's ETag is its MD5 on S3, R2 and the
embedded store): an unchanged workspace costs one HeadObject (Class B) and no write. The
sandbox remembers the MD5 of the archive it last made or applied and the state of its files
then, so when both still hold it answers "unchanged" after a walk, without compressing.

The archive is made and applied by the sandbox (its host), never by following a link the agent
planted (see `chalicelib.sandbox.archive`).
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from chalicelib.config import Settings
from chalicelib.errors import AppError, PayloadTooLarge
from chalicelib.ids import validate_id
from chalicelib.sandbox import archive
from chalicelib.sandbox.base import Sandbox, SandboxError, SnapshotTooLarge, WorkspaceEntry
from chalicelib.storage import ObjectNotFound, ObjectStore, layout
from chalicelib.storage.base import ObjectInfo, iter_all
from chalicelib.storage.quarantine import set_aside

log = logging.getLogger(__name__)

OWNERS = "workspace-owners/"


class SnapshotUnreadable(AppError):
    """The stored workspace archive does not unpack: set aside, and the workspace starts empty."""

    code = "workspace_snapshot_unreadable"

    def __init__(self, aside: str, problem: str) -> None:
        super().__init__(
            f"The saved workspace could not be unpacked ({problem}); it was set aside as {aside} and this session's "
            "workspace starts empty. Your skills and the conversation are intact.",
        )
        self.aside = aside

SaveOutcome = Literal["written", "unchanged", "empty"]


def snapshot_key(session_id: str, user_id: str) -> str:
    """Where the workspace archive of `user_id`'s session lives."""
    return layout.session_key(session_id, f"workspace/{validate_id(user_id, 'userId')}.tar.gz")


def snapshot_prefix(session_id: str) -> str:
    """The folder of a session's workspace archives (one per owner the session id ever had)."""
    return layout.session_key(session_id, "workspace") + "/"


def owner_marker_key(user_id: str, session_id: str) -> str:
    """The marker naming a session whose workspace belongs to `user_id`."""
    return f"{OWNERS}{validate_id(user_id, 'userId')}/{validate_id(session_id, 'sessionId')}"


@dataclass(frozen=True)
class SaveResult:
    """What a save did: `written`, `unchanged` (same bytes as stored) or `empty` (nothing to keep)."""

    outcome: SaveOutcome
    size: int


class WorkspaceSnapshots:
    """Saves, restores, reads and edits session workspace archives in the bucket."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store

    @property
    def max_bytes(self) -> int:
        return self.settings.workspace.snapshot_bytes

    # -- save and restore ------------------------------------------------------------------

    def save(self, session_id: str, user_id: str, sandbox: Sandbox) -> SaveResult:
        """Save the sandbox's workspace if it changed since the stored archive.

        Raises AppError `workspace_snapshot_too_large` (413) when the archive passes the cap.
        """
        key = snapshot_key(session_id, user_id)
        try:
            stored: ObjectInfo | None = self.store.head(key)
        except ObjectNotFound:
            stored = None
        try:
            data = sandbox.export_workspace(self.max_bytes, stored.etag.strip('"') if stored is not None else None)
        except SnapshotTooLarge as exc:
            raise PayloadTooLarge(str(exc), code="workspace_snapshot_too_large") from None
        if data is None:
            return SaveResult("unchanged", stored.size if stored is not None else 0)
        if stored is None and self._is_empty(data):
            return SaveResult("empty", len(data))
        if stored is not None and stored.etag.strip('"') == hashlib.md5(data).hexdigest():
            return SaveResult("unchanged", len(data))
        self.store.put(key, data, content_type="application/gzip")
        if stored is None:
            # Erasing a user must find this session's workspace without scanning every session.
            self.store.put(owner_marker_key(user_id, session_id), b"", content_type="text/plain")
        return SaveResult("written", len(data))

    def restore(self, session_id: str, user_id: str, sandbox: Sandbox) -> int | None:
        """Put the latest archive back into a (new) sandbox; return the file count, None without one.

        An archive that does not unpack (truncated, garbled) would fail every restore, so every
        turn: it is set aside under corrupt/, removed, and SnapshotUnreadable raised; the session
        goes on with an empty workspace."""
        data = self.load(session_id, user_id)
        if data is None:
            return None
        problem = self.unreadable(data)
        if problem is not None:
            key = snapshot_key(session_id, user_id)
            aside = set_aside(self.store, key, data, problem)
            self.store.delete(key)
            raise SnapshotUnreadable(aside, problem)
        return sandbox.import_workspace(data, self.max_bytes)

    def unreadable(self, data: bytes) -> str | None:
        """Why the archive cannot be unpacked (its gzip stream checked to the end, CRC included,
        then its tar entries), or None when it can."""
        stream = zlib.decompressobj(wbits=31)
        try:
            for offset in range(0, len(data), 1 << 16):
                chunk = data[offset:offset + (1 << 16)]
                while chunk and not stream.eof:
                    stream.decompress(chunk, 1 << 20)  # bounded output: the bytes are only checked
                    chunk = stream.unconsumed_tail
                if stream.eof:
                    break
            if not stream.eof:
                return "the compressed stream ends early (truncated)"
            archive.archive_manifest(data, self.max_bytes)
        except SnapshotTooLarge:
            return None  # readable; the import says it is too large
        except (zlib.error, EOFError, OSError, tarfile.TarError, SandboxError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def load(self, session_id: str, user_id: str) -> bytes | None:
        """The stored archive's bytes, or None when the session has none."""
        try:
            return self.store.get(snapshot_key(session_id, user_id)).body
        except ObjectNotFound:
            return None

    def last_owner(self, session_id: str) -> str | None:
        """Whose archive a session without a record has (the newest, if the id had several owners)."""
        found = iter_all(self.store, snapshot_prefix(session_id))
        if not found:
            return None
        newest = max(found, key=lambda o: o.last_modified)
        return newest.key.rsplit("/", 1)[1].removesuffix(".tar.gz")

    # -- the archive without a sandbox (the files API after the sandbox is gone) -------------

    def entries(self, data: bytes) -> list[WorkspaceEntry]:
        return archive.archive_manifest(data, self.max_bytes)

    def read(self, data: bytes, path: str) -> bytes:
        return archive.archive_read(data, path, self.max_bytes)

    def edit(self, session_id: str, user_id: str, path: str, content: bytes | None) -> bool:
        """Write (or delete, content None) one file inside the stored archive; return whether it changed."""
        current = self.load(session_id, user_id)
        try:
            data, changed = archive.archive_edit(current, path, content, self.max_bytes,
                                                 datetime.now(timezone.utc).timestamp())
        except SnapshotTooLarge as exc:
            raise PayloadTooLarge(str(exc), code="workspace_snapshot_too_large") from None
        if changed:
            self.store.put(snapshot_key(session_id, user_id), data, content_type="application/gzip")
            if current is None:
                self.store.put(owner_marker_key(user_id, session_id), b"", content_type="text/plain")
        return changed

    # -- lifecycle ---------------------------------------------------------------------------

    def delete_for_user(self, user_id: str) -> int:
        """Delete every workspace archive of the user's sessions, and their markers; return how many objects went."""
        markers = [o.key for o in iter_all(self.store, f"{OWNERS}{validate_id(user_id, 'userId')}/")]
        keys = [snapshot_key(m.rsplit("/", 1)[1], user_id) for m in markers]
        return self.store.delete_many(keys + markers) if markers else 0

    def _is_empty(self, data: bytes) -> bool:
        # An archive holding nothing but an empty .claude folder is a few hundred bytes.
        return len(data) < 4096 and not archive.has_content(archive.archive_manifest(data, self.max_bytes))
