"""The skills bundle: one object holding copies of a user's small skill files, keyed by ETag.

Setup must not get slower with every skill a user adds. Reading N files costs N requests, and
even in parallel, N signed requests cost CPU in the Lambda and queue at the store. So the
skill files are also kept, together, in `users/{userId}/cache/skills-bundle.json`, and setup
reads that one object next to the listing.

The listing stays the only source of truth. A bundle entry is used only when its ETag equals
the ETag the listing reports for that key, so a stale or damaged bundle can cost requests but
can never serve wrong content. Setup keeps it up to date: it rewrites it when it finds it behind
(skills uploaded since, files written straight to the bucket or through the sandbox's mount).
The REST skill writes leave it alone: rewriting it made each upload cost the size of every
skill (170 MB written for a user's 1,000 uploads). Losing the bundle loses nothing: it is
rebuilt from the files.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ValidationError

from chalicelib.storage import layout
from chalicelib.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed, StorageError

log = logging.getLogger(__name__)

#: Larger files are always read on their own: the bundle is for the many small markdown files.
MAX_FILE_BYTES = 64 * 1024
#: A bundle never grows past this; files that do not fit are read on their own.
MAX_TOTAL_BYTES = 8 * 1024 * 1024


class BundleFile(BaseModel):
    """One file's copy. UTF-8 files are stored as text, anything else as base64."""

    etag: str
    size: int
    text: str | None = None
    base64: str | None = None

    @classmethod
    def of(cls, etag: str, body: bytes) -> BundleFile:
        try:
            return cls(etag=etag, size=len(body), text=body.decode("utf-8"))
        except UnicodeDecodeError:
            return cls(etag=etag, size=len(body), base64=base64.b64encode(body).decode("ascii"))

    def body(self) -> bytes:
        if self.text is not None:
            return self.text.encode("utf-8")
        try:
            return base64.b64decode(self.base64 or "", validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bundle entry is not valid base64: {exc}") from exc


class BundleDocument(BaseModel):
    """The stored JSON. `files` is keyed by the path under `users/{userId}/skills/`."""

    version: Literal[1] = 1
    files: dict[str, BundleFile] = {}

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle as read, with the ETag a conditional rewrite must match (None: none stored)."""

    document: BundleDocument
    etag: str | None


@dataclass(frozen=True)
class BundleMatch:
    """What a bundle holds for a listing: the bodies it can serve, and what must be fetched."""

    bodies: dict[str, bytes]
    missing: list[ObjectInfo]
    #: True when a rewrite would change the bundle: it holds files that are gone or changed,
    #: or lacks a listed file that would fit.
    stale: bool


class SkillBundle:
    """Reads, matches and updates one user's skills bundle."""

    def __init__(self, store: ObjectStore, *, max_file_bytes: int = MAX_FILE_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes

    def load(self, user_id: str) -> LoadedBundle:
        """The stored bundle; an empty one when there is none or it cannot be read."""
        key = layout.skills_bundle_key(user_id)
        try:
            stored = self.store.get(key)
        except ObjectNotFound:
            return LoadedBundle(BundleDocument(), None)
        try:
            return LoadedBundle(BundleDocument.model_validate_json(stored.body), stored.info.etag)
        except ValidationError as exc:
            # A cache: an unreadable one is replaced on the next repair, never trusted.
            log.warning("skills bundle %s is unreadable and will be rebuilt: %s", key, exc.errors()[:1])
            return LoadedBundle(BundleDocument(), stored.info.etag)

    def match(self, user_id: str, listing: list[ObjectInfo], loaded: LoadedBundle) -> BundleMatch:
        """Serve every listed file whose ETag the bundle holds; list the others to fetch."""
        prefix = layout.skills_prefix(user_id)
        files = loaded.document.files
        bodies: dict[str, bytes] = {}
        missing: list[ObjectInfo] = []
        listed: set[str] = set()
        room = self.max_total_bytes - loaded.document.total_bytes()
        stale = False
        for info in listing:
            path = info.key[len(prefix):]
            listed.add(path)
            entry = files.get(path)
            if entry is not None and entry.etag == info.etag:
                try:
                    bodies[info.key] = entry.body()
                    continue
                except ValueError:
                    pass  # damaged entry: fetch the file, and rewrite the bundle
            missing.append(info)
            if entry is not None or (info.size <= self.max_file_bytes and info.size <= room):
                stale = True
        if any(path not in listed for path in files):
            stale = True
        return BundleMatch(bodies=bodies, missing=missing, stale=stale)

    def repair(self, user_id: str, listing: list[ObjectInfo], bodies: dict[str, bytes], loaded: LoadedBundle) -> bool:
        """Rewrite the bundle from a full listing and the bodies just read; True if it was written.

        Opportunistic: it runs inside setup, so a concurrent writer (412) or a storage fault
        leaves the old bundle in place and the next setup tries again.
        """
        prefix = layout.skills_prefix(user_id)
        etags = {info.key: info.etag for info in listing}
        document = self._fit({
            key[len(prefix):]: BundleFile.of(etags[key], body) for key, body in sorted(bodies.items()) if key in etags
        })
        try:
            self._save(user_id, document, loaded.etag)
        except (PreconditionFailed, ObjectNotFound):
            return False
        except StorageError as exc:
            log.warning("could not rewrite the skills bundle of %s: %s", user_id, exc)
            return False
        return True

    def _fit(self, files: dict[str, BundleFile]) -> BundleDocument:
        """Keep, in key order, each file that is small enough and still fits the total."""
        kept: dict[str, BundleFile] = {}
        total = 0
        for path, entry in files.items():
            if entry.size <= self.max_file_bytes and total + entry.size <= self.max_total_bytes:
                kept[path] = entry
                total += entry.size
        return BundleDocument(files=kept)

    def _save(self, user_id: str, document: BundleDocument, etag: str | None) -> None:
        if not document.files:
            # No skills, no bundle: a user who deleted every skill leaves nothing behind.
            if etag is not None:
                self.store.delete(layout.skills_bundle_key(user_id))
            return
        self.store.put(
            layout.skills_bundle_key(user_id),
            document.model_dump_json().encode(),
            content_type="application/json",
            if_match=etag,
            if_none_match=etag is None,
        )
