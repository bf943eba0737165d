"""Durable workspaces: a session's /workspace (without the skills) saved to the bucket as
incremental snapshots, and restored whenever its sandbox has to be made again.

Layout (the format is `chalicelib.sandbox.snapshot_format`):

    sessions/{sessionId}/workspace/{userId}.manifest.json   the root of the latest snapshot, written last
    sessions/{sessionId}/workspace/{userId}/{lineage}/p-…   packs: changed files' contents (zlib each)
    sessions/{sessionId}/workspace/{userId}/{lineage}/s-…   manifest segments (content-addressed)
    sessions/{sessionId}/workspace/{userId}.unrestored.manifest.json
                                                     a root that could not be restored, set aside so
                                                     the session goes on (its objects are kept)
    sessions/{sessionId}/workspace/{userId}.tar.gz   today's earlier layout: one archive, still
                                                     restored and read; the first save replaces it
    workspace-owners/{userId}/{sessionId}            empty marker, so erasing a user finds them

The owner is in every key because a destroyed session's id can be set up again by another user:
the new owner's sandbox must never be restored from, and its erasure never remove, the old
owner's files.

A save asks the sandbox, while a HeadObject of the root runs beside it, whether its workspace
still matches a snapshot it made or applied (a walk of lstats, nothing read): when the stored
root is one of those, nothing is written. Otherwise the sandbox hands over only the new packs
(the changed files) and segments, and the root; they are written, then the root with
If-Match on the one the delta was made against (two saves racing cannot both win; the loser
makes its delta again), then what the old root referenced and the new one does not is
deleted. A save interrupted before its root leaves objects no root references: a restore
deletes those older than `ORPHAN_AGE` (a save still running is younger).

The sandbox (its host) walks, reads and writes the workspace, never following a link the agent
planted (see `chalicelib.sandbox.incremental`).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from chalicelib.config import Settings
from chalicelib.errors import PayloadTooLarge, ServiceUnavailable
from chalicelib.ids import validate_id
from chalicelib.sandbox import archive
from chalicelib.sandbox import snapshot_format as fmt
from chalicelib.sandbox.base import (
    WORKSPACE,
    Sandbox,
    SandboxFileNotFound,
    SandboxPathError,
    SnapshotTooLarge,
    WorkspaceEntry,
)
from chalicelib.storage import ObjectNotFound, ObjectStore, layout
from chalicelib.storage.base import ObjectInfo, PreconditionFailed, get_many
from chalicelib.storage.listing import iter_all

log = logging.getLogger(__name__)

OWNERS = "workspace-owners/"

SaveOutcome = Literal["written", "unchanged", "empty"]


def snapshot_key(session_id: str, user_id: str) -> str:
    """Where the workspace archive of `user_id`'s session lives."""
    return layout.session_key(session_id, f"workspace/{validate_id(user_id, 'userId')}.tar.gz")


def unrestored_key(session_id: str, user_id: str) -> str:
    """Where an archive that could not be restored is kept (the files API reads it with snapshot=unrestored)."""
    return snapshot_key(session_id, user_id).removesuffix(".tar.gz") + UNRESTORED_SUFFIX


UNRESTORED_SUFFIX = ".unrestored.tar.gz"
MANIFEST_SUFFIX = ".manifest.json"
UNRESTORED_MANIFEST_SUFFIX = ".unrestored.manifest.json"
#: Objects no root references are deleted at a restore once this old (a save writes its objects
#: before its root: younger ones may belong to a save still running).
ORPHAN_AGE = timedelta(hours=1)
#: Saves that lose the race for the root (If-Match) before giving up.
SAVE_ATTEMPTS = 3
#: Reads of a root whose objects a save deleted meanwhile (it replaced the root) before giving up.
RESTORE_ATTEMPTS = 3


def manifest_key(session_id: str, user_id: str, *, unrestored: bool = False) -> str:
    """Where the root of `user_id`'s snapshot of the session lives (`unrestored`: the one set aside)."""
    suffix = UNRESTORED_MANIFEST_SUFFIX if unrestored else MANIFEST_SUFFIX
    return layout.session_key(session_id, f"workspace/{validate_id(user_id, 'userId')}{suffix}")


def objects_prefix(session_id: str, user_id: str) -> str:
    """The folder of the packs and segments of `user_id`'s snapshots of the session."""
    return layout.session_key(session_id, f"workspace/{validate_id(user_id, 'userId')}") + "/"


def stored_bytes(store: ObjectStore, session_id: str, user_id: str) -> int:
    """What the user's snapshot of the session takes in the bucket (USER_STORAGE_MB counts it):
    the root and the objects it references, or the archive of the earlier layout."""
    try:
        found = store.get(manifest_key(session_id, user_id))
        return len(found.body) + fmt.decode_root(found.body).stored
    except ObjectNotFound:
        pass
    except fmt.SnapshotDamaged:
        return sum(o.size for o in iter_all(store, objects_prefix(session_id, user_id)))
    try:
        return store.head(snapshot_key(session_id, user_id)).size
    except ObjectNotFound:
        return 0


def snapshot_prefix(session_id: str) -> str:
    """The folder of a session's workspace archives (one per owner the session id ever had)."""
    return layout.session_key(session_id, "workspace") + "/"


def owner_marker_key(user_id: str, session_id: str) -> str:
    """The marker naming a session whose workspace belongs to `user_id`."""
    return f"{OWNERS}{validate_id(user_id, 'userId')}/{validate_id(session_id, 'sessionId')}"


@dataclass(frozen=True)
class SaveResult:
    """What a save did: `written`, `unchanged` (the stored snapshot still matches) or `empty`
    (nothing to keep); `size`: bytes the save wrote (`written`) or the stored root's."""

    outcome: SaveOutcome
    size: int


@dataclass(frozen=True)
class _Loaded:
    """A stored snapshot read for the files API: a root and its entries, or an archive."""

    root: fmt.Root | None = None
    etag: str | None = None
    entries: dict[str, fmt.Entry] | None = None
    archive: bytes | None = None


_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="snapshot")


class WorkspaceSnapshots:
    """Saves, restores, reads and edits session workspace snapshots in the bucket."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store

    @property
    def max_bytes(self) -> int:
        return self.settings.workspace.snapshot_bytes

    # -- save ------------------------------------------------------------------------------

    def save(self, session_id: str, user_id: str, sandbox: Sandbox) -> SaveResult:
        """Save what changed in the sandbox's workspace since the stored snapshot.

        Raises AppError `workspace_snapshot_too_large` (413) when the snapshot passes the cap.
        """
        key = manifest_key(session_id, user_id)
        for _ in range(SAVE_ATTEMPTS):
            stored_future = _POOL.submit(self._head, key)
            unchanged = sandbox.snapshot_unchanged()
            stored = stored_future.result()
            base = stored.etag.strip('"') if stored is not None else None
            if base is not None and base in unchanged:
                return SaveResult("unchanged", stored.size if stored is not None else 0)
            if stored is None and fmt.EMPTY in unchanged:
                return SaveResult("empty", 0)  # found empty before (and any archive of the earlier layout deleted)
            try:
                delta = sandbox.snapshot_delta(self.max_bytes, base)
            except SnapshotTooLarge as exc:
                raise PayloadTooLarge(str(exc), code="workspace_snapshot_too_large") from None
            if delta is None:
                return SaveResult("unchanged", stored.size if stored is not None else 0)
            if stored is None and delta.files == 0:
                # Nothing to keep. An archive of the earlier layout is older than this live, empty
                # workspace (a save would have replaced it): it goes, as a save of it would have
                # emptied it. A delete is free on R2, where a HEAD to ask first is not.
                self.store.delete_many([snapshot_key(session_id, user_id)])
                return SaveResult("empty", 0)
            written = self._write(session_id, user_id, delta, stored)
            if written is not None:
                return SaveResult("written", written)
        raise ServiceUnavailable("The workspace snapshot kept changing under this save (other saves of the "
                                 "session won each time); the next save retries.", code="workspace_save_conflict")

    def _write(self, session_id: str, user_id: str, delta: fmt.SnapshotDelta, stored: ObjectInfo | None) -> int | None:
        """Write a delta's objects, then its root (conditional); None when another save won."""
        prefix = objects_prefix(session_id, user_id)
        key = manifest_key(session_id, user_id)
        garbage = set(delta.obsolete)
        if stored is not None and delta.base is None:
            # Made from nothing over a root this sandbox never knew: all that root held goes.
            old = self._root(key)
            if old is not None:
                garbage = old[0].objects()
        # Erasing a user must find this session's workspace without scanning every session: with
        # the first snapshot, its marker goes up with the objects, before the root.
        marker = {owner_marker_key(user_id, session_id): b""} if stored is None else {}
        self._put_many({**{prefix + k: v for k, v in delta.objects.items()}, **marker})
        try:
            if stored is not None:
                self.store.put(key, delta.root, content_type="application/json", if_match=stored.etag)
            else:
                self.store.put(key, delta.root, content_type="application/json", if_none_match=True)
        except PreconditionFailed:
            return None  # its objects are swept as orphans; no root references them
        if stored is None:
            self.store.delete_many([snapshot_key(session_id, user_id)])  # replaced by this snapshot
        garbage -= fmt.decode_root(delta.root).objects()
        if garbage:
            self.store.delete_many(sorted(prefix + k for k in garbage))
        return len(delta.root) + sum(len(v) for v in delta.objects.values())

    # -- restore ---------------------------------------------------------------------------

    def restore(self, session_id: str, user_id: str, sandbox: Sandbox) -> int | None:
        """Put the stored snapshot (either layout) into the sandbox; the file count, or None when
        there is none. SandboxError (SnapshotDamaged among them) when it cannot be restored."""
        key = manifest_key(session_id, user_id)
        for attempt in range(RESTORE_ATTEMPTS):
            found = self._root(key)
            if found is None:
                archive_data = self.load(session_id, user_id)
                if archive_data is None:
                    return None
                return sandbox.import_workspace(archive_data, self.max_bytes)
            root, data, etag = found
            # The listing the orphan sweep needs is taken meanwhile: it costs no time of its own.
            listed = _POOL.submit(iter_all, self.store, snapshot_prefix(session_id))
            objects = self._objects(session_id, user_id, root)
            if len(objects) < len(root.objects()) and attempt < RESTORE_ATTEMPTS - 1 and self._etag(key) != etag:
                continue  # a save replaced the root (and deleted its garbage) while we read: read again
            files = sandbox.import_snapshot(data, objects, self.max_bytes)
            self._sweep(session_id, user_id, root, listed.result())
            return files
        return None

    def set_aside(self, session_id: str, user_id: str) -> None:
        """Keep a snapshot that could not be restored apart from the live one, which the session's
        next saves replace: the files API still reads it (snapshot=unrestored), and deletes from it."""
        key = manifest_key(session_id, user_id)
        try:
            data = self.store.get(key).body
        except ObjectNotFound:
            archive_data = self.load(session_id, user_id)
            if archive_data is None:
                return
            self.store.put(unrestored_key(session_id, user_id), archive_data, content_type="application/gzip")
            self.store.delete_many([snapshot_key(session_id, user_id)])
            return
        self.store.put(manifest_key(session_id, user_id, unrestored=True), data, content_type="application/json")
        self.store.delete_many([key])

    def _sweep(self, session_id: str, user_id: str, root: fmt.Root, listed: list[ObjectInfo]) -> None:
        """Delete the owner's objects no root references (a save cut before its root), once old.
        `listed`: the session's snapshot folder, listed before the restore read its objects."""
        prefix = objects_prefix(session_id, user_id)
        found = [o for o in listed if o.key.startswith(prefix)]
        keep = root.objects()
        aside_key = manifest_key(session_id, user_id, unrestored=True)
        aside = self._root(aside_key) if any(o.key == aside_key for o in listed) else None
        if aside is not None:
            keep |= aside[0].objects()
        cutoff = datetime.now(timezone.utc) - ORPHAN_AGE
        orphans = [o.key for o in found if o.key[len(prefix):] not in keep and o.last_modified < cutoff]
        if orphans:
            log.info("deleting %d orphaned snapshot objects of session %s", len(orphans), session_id)
            self.store.delete_many(orphans)

    # -- the snapshot without a sandbox (the files API after the sandbox is gone) ------------

    def entries(self, session_id: str, user_id: str, *, unrestored: bool = False) -> list[WorkspaceEntry] | None:
        """Every entry of the stored snapshot, or None when there is none."""
        loaded = self._load(session_id, user_id, unrestored)
        if loaded is None:
            return None
        if loaded.archive is not None:
            return archive.archive_manifest(loaded.archive, self.max_bytes)
        return fmt.listing(list((loaded.entries or {}).values()))

    def read(self, session_id: str, user_id: str, path: str, *, unrestored: bool = False) -> bytes:
        """One file's bytes; SandboxFileNotFound, or SandboxPathError for a folder or a link."""
        rel = archive.clean_relative(path)
        loaded = self._load(session_id, user_id, unrestored)
        if loaded is None:
            raise SandboxFileNotFound(f"No file at {WORKSPACE}/{rel}: the session's workspace is empty.")
        if loaded.archive is not None:
            return archive.archive_read(loaded.archive, rel, self.max_bytes)
        entry = (loaded.entries or {}).get(rel)
        if entry is None:
            raise SandboxFileNotFound(f"No file at {WORKSPACE}/{rel}.")
        if entry.kind == "symlink":
            raise SandboxPathError(f"{WORKSPACE}/{rel} is a symbolic link; links are not followed.")
        if entry.kind == "dir":
            raise SandboxPathError(f"{WORKSPACE}/{rel} is a folder, not a file.")
        if not entry.size or entry.pack is None:
            return b""
        try:
            pack = self.store.get(objects_prefix(session_id, user_id) + entry.pack).body
        except ObjectNotFound:
            pack = None
        return fmt.file_content(entry, pack)

    def edit(self, session_id: str, user_id: str, path: str, content: bytes | None, *, unrestored: bool = False) -> bool:
        """Write (or delete, content None) one file of the stored snapshot; return whether it changed.

        Costs what the file costs: one new pack holding it, the segments its entry falls in, the root."""
        rel = archive.clean_relative(path)
        loaded = self._load(session_id, user_id, unrestored)
        if loaded is not None and loaded.archive is not None:
            return self._edit_archive(session_id, user_id, rel, content, loaded.archive, unrestored)
        if loaded is None and (content is None or unrestored):
            return False
        root, entries = (loaded.root, dict(loaded.entries or {})) if loaded is not None else (None, {})
        changed, writer, lineage = _apply_edit(entries, rel, content, root)
        if not changed:
            return False
        writer.finish(entries)
        lines, reuse = fmt.index_segments(root, dict(loaded.entries or {})) if loaded is not None and root else ({}, {})
        lines = {r: lines.get(r) or fmt.entry_line(e) for r, e in entries.items()}
        sizes = {**(root.packs if root is not None else {}), **{k: len(v) for k, v in writer.packs.items()}}
        new_root, objects, _ = fmt.seal(lineage, entries, lines, reuse, sizes, root.written if root is not None else None)
        objects.update({k: bytes(v) for k, v in writer.packs.items() if k in new_root.packs})
        if new_root.stored > self.max_bytes:
            raise PayloadTooLarge(f"The workspace snapshot would take {new_root.stored} bytes, past "
                                  f"WORKSPACE_SNAPSHOT_MB={self.max_bytes // 2**20} MiB: delete large files first.",
                                  code="workspace_snapshot_too_large")
        prefix = objects_prefix(session_id, user_id)
        first = loaded is None or loaded.etag is None
        marker = {owner_marker_key(user_id, session_id): b""} if first else {}
        self._put_many({**{prefix + k: v for k, v in objects.items()}, **marker})
        key = manifest_key(session_id, user_id, unrestored=unrestored)
        data = fmt.encode_root(new_root)
        if loaded is not None and loaded.etag is not None:
            self.store.put(key, data, content_type="application/json", if_match=loaded.etag)
        else:
            self.store.put(key, data, content_type="application/json", if_none_match=True)
        garbage = (root.objects() if root is not None else set()) - new_root.objects()
        if garbage:
            self.store.delete_many(sorted(prefix + k for k in garbage))
        return True

    def _edit_archive(self, session_id: str, user_id: str, rel: str, content: bytes | None, current: bytes,
                      unrestored: bool) -> bool:
        """An edit of a snapshot in the earlier layout (one archive), kept in that layout."""
        try:
            data, changed = archive.archive_edit(current, rel, content, self.max_bytes,
                                                 datetime.now(timezone.utc).timestamp())
        except SnapshotTooLarge as exc:
            raise PayloadTooLarge(str(exc), code="workspace_snapshot_too_large") from None
        if changed:
            key = unrestored_key(session_id, user_id) if unrestored else snapshot_key(session_id, user_id)
            self.store.put(key, data, content_type="application/gzip")
        return changed

    def load(self, session_id: str, user_id: str, *, unrestored: bool = False) -> bytes | None:
        """The earlier layout's archive (`unrestored`: the one set aside), or None when there is none."""
        key = unrestored_key(session_id, user_id) if unrestored else snapshot_key(session_id, user_id)
        try:
            return self.store.get(key).body
        except ObjectNotFound:
            return None

    def has_unrestored(self, session_id: str, user_id: str) -> bool:
        """Whether a snapshot that could not be restored is kept apart (either layout)."""
        return (self._exists(manifest_key(session_id, user_id, unrestored=True))
                or self._exists(unrestored_key(session_id, user_id)))

    def last_owner(self, session_id: str) -> str | None:
        """Whose snapshot a session without a record has (the newest, if the id had several owners)."""
        prefix = snapshot_prefix(session_id)
        roots = [o for o in iter_all(self.store, prefix) if "/" not in o.key[len(prefix):]]
        if not roots:
            return None
        live = [o for o in roots if not o.key.endswith((UNRESTORED_SUFFIX, UNRESTORED_MANIFEST_SUFFIX))] or roots
        newest = max(live, key=lambda o: o.last_modified)
        name = newest.key[len(prefix):]
        for suffix in (UNRESTORED_MANIFEST_SUFFIX, MANIFEST_SUFFIX, UNRESTORED_SUFFIX, ".tar.gz"):
            if name.endswith(suffix):
                return name.removesuffix(suffix)
        return None

    # -- lifecycle ---------------------------------------------------------------------------

    def delete_for_user(self, user_id: str) -> int:
        """Delete every snapshot of the user's sessions (both layouts, their objects) and their
        markers; return how many objects went."""
        markers = [o.key for o in iter_all(self.store, f"{OWNERS}{validate_id(user_id, 'userId')}/")]
        keys: list[str] = []
        for marker in markers:
            sid = marker.rsplit("/", 1)[1]
            keys += [snapshot_key(sid, user_id), unrestored_key(sid, user_id), manifest_key(sid, user_id),
                     manifest_key(sid, user_id, unrestored=True)]
            keys += [o.key for o in iter_all(self.store, objects_prefix(sid, user_id))]
        return self.store.delete_many(keys + markers) if markers else 0

    # -- internals ---------------------------------------------------------------------------

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            return self.store.head(key)
        except ObjectNotFound:
            return None

    def _exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _etag(self, key: str) -> str | None:
        found = self._head(key)
        return found.etag if found is not None else None

    def _root(self, key: str) -> tuple[fmt.Root, bytes, str] | None:
        try:
            found = self.store.get(key)
        except ObjectNotFound:
            return None
        return fmt.decode_root(found.body), found.body, found.info.etag

    def _objects(self, session_id: str, user_id: str, root: fmt.Root, keys: set[str] | None = None) -> dict[str, bytes]:
        prefix = objects_prefix(session_id, user_id)
        got = get_many(self.store, [prefix + k for k in sorted(keys if keys is not None else root.objects())])
        return {k[len(prefix):]: v.body for k, v in got.items() if v is not None}

    def _load(self, session_id: str, user_id: str, unrestored: bool) -> _Loaded | None:
        found = self._root(manifest_key(session_id, user_id, unrestored=unrestored))
        if found is None:
            data = self.load(session_id, user_id, unrestored=unrestored)
            return _Loaded(archive=data) if data is not None else None
        root, _, etag = found
        segments = self._objects(session_id, user_id, root, set(root.segments))
        entries = {e.rel: e for e in fmt.read_entries(root, segments)}
        return _Loaded(root=root, etag=etag, entries=entries)

    def _put_many(self, objects: dict[str, bytes]) -> None:
        """PUT the objects in parallel (a first save of a big workspace is several packs)."""
        for done in [_POOL.submit(self.store.put, k, v, content_type="application/octet-stream")
                     for k, v in objects.items()]:
            done.result()


def _apply_edit(entries: dict[str, fmt.Entry], rel: str, content: bytes | None,
                root: fmt.Root | None) -> tuple[bool, fmt.PackWriter, str]:
    """Change `entries` in place the way writing (or deleting) `rel` in a live workspace would:
    parents made as folders, never through a link or over a file; a folder or link not replaced."""
    lineage = root.lineage if root is not None else fmt.new_lineage()
    writer = fmt.PackWriter(lineage)
    parts = rel.split("/")
    parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
    for parent in parents:
        found = entries.get(parent)
        if found is not None and found.kind == "symlink":
            raise SandboxPathError(f"{WORKSPACE}/{rel} cannot be written: {WORKSPACE}/{parent} is a symbolic link.")
        if found is not None and found.kind != "dir":
            raise SandboxPathError(f"{WORKSPACE}/{rel} cannot be written: {WORKSPACE}/{parent} is not a folder.")
    current = entries.get(rel)
    if content is None:
        below = [r for r in entries if r == rel or r.startswith(rel + "/")]
        for r in below:
            del entries[r]
        return bool(below), writer, lineage
    if current is not None and current.kind == "symlink":
        raise SandboxPathError(f"{WORKSPACE}/{rel} is a symbolic link; it is not written through.")
    if current is not None and current.kind == "dir":
        raise SandboxPathError(f"{WORKSPACE}/{rel} is a folder, not a file.")
    for parent in parents:
        if parent not in entries:
            entries[parent] = fmt.Entry(**fmt.path_fields(parent), kind="dir", mode=0o755)
    pack, offset, length, digest = writer.add(content) if content else ("", 0, 0, hashlib.sha256(b"").hexdigest()[:32])
    now = int(datetime.now(timezone.utc).timestamp() * 1e9)
    entries[rel] = fmt.Entry(**fmt.path_fields(rel), kind="file", mode=current.mode if current is not None else 0o644,
                             mtime_ns=now, size=len(content), digest=digest, pack=pack or None,
                             offset=offset, length=length)
    return True, writer, lineage
