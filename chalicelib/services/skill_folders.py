"""Folder skills written whole: one writer at a time, and a manifest that readers trust.

A folder skill is several objects, and storage has no multi-object transaction. Ten uploads of
one folder at once used to interleave: each listed the "stale" files before any wrote, and the
folder ended with files from all ten. So:

- Writers take a lease, `users/{u}/cache/skill-uploads/{name}.json` (created with
  If-None-Match: *, taken over once expired), for the upload or the delete of that folder. A
  second writer waits a few seconds for it, then answers 409 `skill_upload_in_progress` having
  written nothing. The folder always ends as exactly one upload left it.
- The upload writes the files, then the manifest `{name}/.skill-manifest.json` (its name can
  never be a user's file: skill paths may not start with a dot) listing each file with its
  ETag, then deletes the files it replaced, then drops the lease. Into a folder without a
  manifest (its first upload) it first puts an empty one, which hides the files to come.
- Readers (GET of the skill, setup) take a folder's files from its manifest. A listed file
  whose ETag differs, a missing one, or a file newer than the manifest that it does not list,
  while a lease is held, means an upload is half-way: the reader waits for it (bounded) and
  reads again, so it sees the old folder or the new one, never a mix. An upload that finished
  while the folder was read (after its listing, before the look at the lease) left a manifest
  other than the one listed: the reader reads again too. Only with no lease and the listed
  manifest still current was the difference made behind the API (a tool, or the agent through
  the mount); it is served: the current content of listed files, plus files newer than the
  manifest. An upload that fails puts the folder back and writes its manifest again (same
  files, a new ETag), so a reader that read it half-written reads it again too.

A folder without a manifest (written behind the API) is every file under it, as before.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, ValidationError

from chalicelib.errors import Conflict
from chalicelib.storage import ObjectNotFound, ObjectStore, PreconditionFailed, layout
from chalicelib.storage.base import ObjectInfo, get_many
from chalicelib.storage.listing import iter_all

log = logging.getLogger(__name__)

MANIFEST_NAME = layout.SKILL_MANIFEST
#: Longer than any REST call (API Gateway gives up at 29 s), so a live writer never loses it.
LEASE_SECONDS = 30
#: How long a writer waits for another writer's lease, and a reader for a half-way upload.
WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.1
#: Folders setup's load looks at once (those whose files differ from their manifest).
_PARALLEL_FOLDERS = 16


class Manifest(BaseModel):
    """`{name}/.skill-manifest.json`: the folder's files (paths inside it) and their ETags."""

    version: int = 1
    upload_id: str
    files: dict[str, str]


class _Lease(BaseModel):
    upload_id: str
    expires_at: datetime


@dataclass
class FolderLease:
    """A held writer lease; `release()` when done (it also expires on its own)."""

    store: ObjectStore
    key: str
    upload_id: str

    def release(self) -> None:
        try:
            self.store.delete(self.key)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself; the write is done
            log.warning("could not release skill upload lease %s (it expires in %d s): %s", self.key, LEASE_SECONDS, exc)


class SkillFolders:
    """Leases for writers and the committed view for readers, for one store."""

    def __init__(self, store: ObjectStore, *, wait_seconds: float = WAIT_SECONDS) -> None:
        self.store = store
        self.wait_seconds = wait_seconds

    # -- writers -------------------------------------------------------------------------

    def acquire(self, user_id: str, name: str) -> FolderLease:
        """Take the folder's writer lease, waiting up to `wait_seconds` for another writer."""
        key = layout.skill_lease_key(user_id, name)
        upload_id = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_seconds
        while True:
            body = _Lease(upload_id=upload_id, expires_at=_now() + timedelta(seconds=LEASE_SECONDS)).model_dump_json().encode()
            try:
                self.store.put(key, body, content_type="application/json", if_none_match=True)
                return FolderLease(self.store, key, upload_id)
            except PreconditionFailed:
                pass
            held = self._read_lease(key)
            if held is not None and held[0].expires_at <= _now():
                try:  # its writer died: take it over (If-Match: only one taker wins)
                    self.store.put(key, body, content_type="application/json", if_match=held[1])
                    return FolderLease(self.store, key, upload_id)
                except (PreconditionFailed, ObjectNotFound):
                    pass
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"Skill {name!r} is being written by another request right now: retry in a few seconds "
                    "(uploads of one folder take turns, so neither is merged into the other).",
                    code="skill_upload_in_progress",
                )
            time.sleep(random.uniform(_POLL_SECONDS / 2, _POLL_SECONDS))

    def manifest_body(self, upload_id: str, etags: dict[str, str]) -> bytes:
        """The manifest for files (path inside the folder -> ETag) just written."""
        return Manifest(upload_id=upload_id, files=dict(sorted(etags.items()))).model_dump_json().encode()

    def renew_manifest(self, user_id: str, name: str) -> None:
        """After a failed upload put the folder back: its manifest again, same files, a new ETag,
        so a reader that read the folder half-written sees it changed and reads it again."""
        key = layout.skill_manifest_key(user_id, name)
        try:
            stored = self.store.get(key)
        except ObjectNotFound:
            return
        manifest = _parse_manifest(stored.body)
        if manifest is None:
            return
        body = manifest.model_copy(update={"upload_id": uuid.uuid4().hex}).model_dump_json().encode()
        try:
            self.store.put(key, body, content_type="application/json", if_match=stored.info.etag)
        except (PreconditionFailed, ObjectNotFound):
            pass  # rewritten meanwhile: its ETag changed anyway

    # -- readers -------------------------------------------------------------------------

    def committed(
        self, user_id: str, name: str, listing: list[ObjectInfo], bodies: dict[str, bytes],
        *, listed_manifest: str | None,
    ) -> tuple[list[ObjectInfo], dict[str, bytes]]:
        """The folder's files as its last upload committed them (see the module docstring).

        `listing` holds the infos of the folder's objects as read (the manifest included) and
        `bodies` at least the manifest's body when there is one; `listed_manifest` is the
        manifest's ETag when the folder was listed (None: there was none). Returns the files
        (manifest excluded) and their bodies; when an upload is half-way, or finished while the
        folder was read, it waits and reads the folder again.
        """
        folder = layout.skill_key(user_id, name) + "/"
        began = listed_manifest
        deadline = time.monotonic() + self.wait_seconds
        while True:
            view = _resolve(folder, listing, bodies)
            if view.consistent:
                return view.files, _bodies_of(view, bodies)
            live, manifest_now = self._look(user_id, name)
            if (not live and manifest_now == began) or time.monotonic() >= deadline:
                # No upload holds the folder, and none committed a manifest since this reading
                # began: the difference was made behind the API (or by a writer that died). Serve it.
                return view.files, _bodies_of(view, bodies)
            if live:
                time.sleep(random.uniform(_POLL_SECONDS / 2, _POLL_SECONDS))
            listed = iter_all(self.store, folder)
            began = manifest_etag(user_id, name, listed)
            fetched = get_many(self.store, [i.key for i in listed])
            bodies = {k: o.body for k, o in fetched.items() if o is not None}
            listing = [o.info for o in fetched.values() if o is not None]

    def committed_skill_files(self, user_id: str, listing: list[ObjectInfo], bodies: dict[str, bytes], *,
                              moved: dict[str, str] | None = None) -> dict[str, bytes]:
        """`bodies` (keyed like `listing`, every skill of the user) restricted to what each
        folder's manifest commits; flat skills pass through; manifests are left out. `moved`
        holds the ETag of each body read in another version than the listing shows (the object
        was rewritten in between): a folder is judged by the versions read."""
        prefix = layout.skills_prefix(user_id)
        moved = moved or {}
        folders: dict[str, list[ObjectInfo]] = {}
        kept: dict[str, bytes] = {}
        for info in listing:
            name = folder_of(info.key, prefix)
            if name is None:
                if info.key in bodies:
                    kept[info.key] = bodies[info.key]
            else:
                folders.setdefault(name, []).append(info)
        unsettled: list[tuple[str, list[ObjectInfo], dict[str, bytes], str | None]] = []
        for name, infos in folders.items():
            read = [replace(i, etag=moved[i.key]) if i.key in moved else i for i in infos]
            folder_bodies = {i.key: bodies[i.key] for i in infos if i.key in bodies}
            view = _resolve(layout.skill_key(user_id, name) + "/", read, folder_bodies)
            if view.consistent:
                kept.update(_bodies_of(view, folder_bodies))
            else:
                unsettled.append((name, read, folder_bodies, manifest_etag(user_id, name, infos)))
        if unsettled:
            # Each needs a look at its lease (and maybe a read again): all at once, not one
            # folder after another.
            with ThreadPoolExecutor(max_workers=min(_PARALLEL_FOLDERS, len(unsettled))) as pool:
                for _, folder_bodies in pool.map(
                        lambda u: self.committed(user_id, u[0], u[1], u[2], listed_manifest=u[3]), unsettled):
                    kept.update(folder_bodies)
        return kept

    def _look(self, user_id: str, name: str) -> tuple[bool, str | None]:
        """Whether a writer holds the folder's lease now, and its manifest's ETag now (None:
        none): both read at once, one round trip."""
        def manifest_etag() -> str | None:
            try:
                return self.store.head(layout.skill_manifest_key(user_id, name)).etag
            except ObjectNotFound:
                return None

        with ThreadPoolExecutor(max_workers=1) as pool:
            manifest_f = pool.submit(manifest_etag)
            held = self._read_lease(layout.skill_lease_key(user_id, name))
            return held is not None and held[0].expires_at > _now(), manifest_f.result()

    def _read_lease(self, key: str) -> tuple[_Lease, str] | None:
        try:
            stored = self.store.get(key)
        except ObjectNotFound:
            return None
        try:
            return _Lease.model_validate_json(stored.body), stored.info.etag
        except ValidationError:
            # Unreadable: treat it as expired so a writer can take it over.
            return _Lease(upload_id="", expires_at=datetime.min.replace(tzinfo=timezone.utc)), stored.info.etag


@dataclass(frozen=True)
class _View:
    files: list[ObjectInfo]
    consistent: bool


def _resolve(folder: str, listing: list[ObjectInfo], bodies: dict[str, bytes]) -> _View:
    manifest_key = folder + MANIFEST_NAME
    by_key = {i.key: i for i in listing}
    manifest_info = by_key.pop(manifest_key, None)
    if manifest_info is None:
        return _View(sorted(by_key.values(), key=lambda i: i.key), consistent=True)
    manifest = _parse_manifest(bodies.get(manifest_key))
    if manifest is None:
        return _View(sorted(by_key.values(), key=lambda i: i.key), consistent=True)
    files: list[ObjectInfo] = []
    consistent = True
    for path, etag in manifest.files.items():
        info = by_key.get(folder + path)
        if info is None:
            consistent = False  # deleted or not yet written
            continue
        if info.etag != etag:
            consistent = False
        files.append(info)
    listed = {folder + p for p in manifest.files}
    for info in by_key.values():
        if info.key not in listed and info.last_modified > manifest_info.last_modified:
            consistent = False  # newer than the manifest: an upload half-way, or a write behind the API
            files.append(info)
    return _View(sorted(files, key=lambda i: i.key), consistent)


def manifest_etag(user_id: str, name: str, listing: list[ObjectInfo]) -> str | None:
    """The ETag of the folder's manifest in a listing (None: not in it)."""
    key = layout.skill_manifest_key(user_id, name)
    return next((i.etag for i in listing if i.key == key), None)


def _bodies_of(view: _View, bodies: dict[str, bytes]) -> dict[str, bytes]:
    return {k: bodies[k] for k in (i.key for i in view.files) if k in bodies}


def _parse_manifest(body: bytes | None) -> Manifest | None:
    if body is None:
        return None
    try:
        return Manifest.model_validate_json(body)
    except ValidationError:
        log.warning("unreadable skill manifest; serving every file of the folder")
        return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def folder_of(key: str, skills_prefix: str) -> str | None:
    """The folder name of a key under `skills_prefix`, or None for a flat skill."""
    rest = key[len(skills_prefix):]
    return rest.split("/", 1)[0] if "/" in rest else None

