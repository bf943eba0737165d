"""The skills catalog: what the skill list shows of each skill, worked out once, at upload.

Listing skills used to read every folder's SKILL.md and parse every frontmatter on every
request (six 300 KB YAML headers made each list take 23 s). Now a skill's listing fields
(form, size, updated, description, and the error of a file that does not parse) are computed
when it is written and kept in two places:

- `users/{u}/cache/skill-catalog/{name}.json`: the upload's own entry. An upload writes this
  small object and nothing that grows with the number of skills (it used to rewrite a bundle
  holding every skill).
- `users/{u}/cache/skill-catalog.json`: every entry, folded together by the readers (the list
  and setup) when they find it behind, so a page of the list reads one object.

The listing of `skills/` stays the truth. An entry is used only when the ETag it was made from
equals the listed ETag of the skill's main file (a flat `.md`, or a folder's `SKILL.md`, whose
ETag a delimited listing does not show: a folder's entry is checked by setup, which lists
every file). A skill without a matching entry (written straight to the bucket, by the agent
through the mount, or stored before the catalog existed) is read and described once, with a
bounded parse, and folded in. Losing the catalog loses nothing: it is rebuilt from the files.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import ValidationError

from chalicelib.errors import ValidationFailed
from chalicelib.services.models import ApiModel
from chalicelib.services.skill_format import SKILL_FILE, describe, split_frontmatter, validate_skill_md
from chalicelib.storage import layout
from chalicelib.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StorageError,
    get_many,
)

log = logging.getLogger(__name__)

SkillForm = Literal["flat", "folder"]
#: How much of a main file is described: what an upload may hold (a larger file written behind the
#: API is described from its start; its frontmatter limit is far below this).
MAX_DESCRIBED_BYTES = 1024 * 1024
_FOLD_ATTEMPTS = 3
#: Entries a process keeps in memory (about 300 bytes each).
MAX_REMEMBERED = 20_000


class CatalogEntry(ApiModel):
    """One skill as the list shows it, and the ETag of the main file it was made from."""

    name: str
    form: SkillForm
    etag: str
    size: int
    updated: datetime
    description: str
    error: str | None = None


class CatalogDocument(ApiModel):
    """`skill-catalog.json`: every entry, by skill name."""

    version: Literal[1] = 1
    entries: dict[str, CatalogEntry] = {}


@dataclass(frozen=True)
class LoadedCatalog:
    """The folded catalog as read, with the ETag a rewrite must match (None: none stored)."""

    document: CatalogDocument
    etag: str | None


def main_path(name: str, form: SkillForm) -> str:
    """The main file of a skill, relative to `skills/`."""
    return f"{name}/{SKILL_FILE}" if form == "folder" else name


def describe_main(name: str, form: SkillForm, info: ObjectInfo, body: bytes) -> CatalogEntry:
    """The entry of a main file: its description, and why it breaks the rules if it does.

    Never raises: what is stored behind the API is listed with an `error`, never a 500.
    """
    text = body[:MAX_DESCRIBED_BYTES].decode("utf-8", "replace")
    error = None
    try:
        if form == "folder":
            validate_skill_md(text, name)
        else:
            split_frontmatter(text)
    except ValidationFailed as exc:
        error = exc.message
    return CatalogEntry(name=name, form=form, etag=info.etag, size=info.size, updated=info.last_modified,
                        description=describe(text, is_skill_md=form == "folder"), error=error)


def main_files(user_id: str, listing: Iterable[ObjectInfo]) -> dict[str, tuple[SkillForm, ObjectInfo]]:
    """Each skill of a full (undelimited) listing, by name, with its main file's info: every
    top-level file is a flat skill, as the list shows it, and a folder's main file is SKILL.md."""
    prefix = layout.skills_prefix(user_id)
    found: dict[str, tuple[SkillForm, ObjectInfo]] = {}
    for info in listing:
        parts = info.key[len(prefix):].split("/")
        if len(parts) == 1:
            found[parts[0]] = ("flat", info)
        elif len(parts) == 2 and parts[1] == SKILL_FILE:
            found[parts[0]] = ("folder", info)
    return found


class SkillCatalog:
    """Reads, writes and folds one user's catalog, and keeps the entries it has seen in memory.

    An entry in memory is keyed by its main file's key and ETag, which every listing shows, so
    a warm process (a Lambda container, the dev server) lists a page with the listing alone and
    can never serve an entry the listing contradicts.
    """

    def __init__(self, store: ObjectStore, *, max_remembered: int = MAX_REMEMBERED) -> None:
        self.store = store
        self.max_remembered = max_remembered
        self._remembered: OrderedDict[tuple[str, str], CatalogEntry] = OrderedDict()
        self._users: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, user_id: str, entry: CatalogEntry) -> None:
        """After an upload: its own entry (small, whatever the number of skills)."""
        self.store.put(layout.skill_catalog_entry_key(user_id, entry.name), entry.model_dump_json(by_alias=True).encode(),
                       content_type="application/json")
        self._remember(user_id, [entry], whole=False)

    def forget(self, user_id: str, name: str) -> None:
        """After a delete: the skill's own entry goes (the folded one is dropped by the next fold)."""
        self.store.delete(layout.skill_catalog_entry_key(user_id, name))

    def knows(self, user_id: str) -> bool:
        """Whether this process holds the user's entries: it has read their catalog before (an
        upload here remembers its own entry, not the others')."""
        with self._lock:
            return user_id in self._users

    def load(self, user_id: str) -> LoadedCatalog:
        """The folded catalog; an empty one when there is none or it cannot be read."""
        key = layout.skill_catalog_key(user_id)
        try:
            stored = self.store.get(key)
        except ObjectNotFound:
            return LoadedCatalog(CatalogDocument(), None)
        try:
            return LoadedCatalog(CatalogDocument.model_validate_json(stored.body), stored.info.etag)
        except ValidationError as exc:
            log.warning("skills catalog %s is unreadable and will be rebuilt: %s", key, exc.errors()[:1])
            return LoadedCatalog(CatalogDocument(), stored.info.etag)

    def resolve(self, user_id: str, wanted: dict[str, tuple[SkillForm, ObjectInfo]],
                loaded: LoadedCatalog | None, bodies: dict[str, bytes] | None = None, *,
                fold: bool = True) -> tuple[dict[str, CatalogEntry], bool]:
        """The entry of each wanted skill (name -> form and its main file's listed info), and
        whether the folded catalog was behind.

        An entry is used only for the ETag the listing shows: from memory, else from the folded
        catalog (`loaded`, or read now when None), else from the upload's own entry, else made
        from the main file (`bodies`, keyed by storage key, or read), described once. Then
        (`fold`) what the catalog lacked is folded into it. With `bodies` (setup holds every
        main file) the uploads' entries are not read: describing costs less than a round trip.
        """
        found: dict[str, CatalogEntry] = {}
        with self._lock:
            for name, (form, info) in wanted.items():
                entry = self._remembered.get((info.key, info.etag))
                if entry is not None and entry.form == form and entry.name == name:
                    found[name] = entry
        missing = {n: v for n, v in wanted.items() if n not in found}
        if not missing and loaded is None:
            return found, False  # all in memory: nothing read, nothing to fold
        if loaded is None:
            loaded = self.load(user_id)
        unfolded: dict[str, tuple[SkillForm, ObjectInfo]] = {}
        for name, (form, info) in missing.items():
            entry = loaded.document.entries.get(name)
            if entry is not None and entry.form == form and entry.etag == info.etag:
                found[name] = entry
            else:
                unfolded[name] = (form, info)
        if unfolded:
            found.update(self._describe_unfolded(user_id, unfolded, bodies))
        self._remember(user_id, found.values())
        # What the folded catalog lacks, this process included (entries its uploads remembered).
        behind = {n: e for n, e in found.items() if loaded.document.entries.get(n) != e}
        if fold and behind:
            self.fold(user_id, loaded, behind, listed=None)
        return found, bool(behind)

    def _describe_unfolded(self, user_id: str, unfolded: dict[str, tuple[SkillForm, ObjectInfo]],
                           bodies: dict[str, bytes] | None) -> dict[str, CatalogEntry]:
        """Entries the folded catalog lacks: the uploads' own (unless `bodies` holds every main
        file, when describing costs less than a round trip), else described from the main file."""
        found: dict[str, CatalogEntry] = {}
        own = {} if bodies is not None else get_many(self.store, [layout.skill_catalog_entry_key(user_id, n) for n in unfolded])
        unread: dict[str, tuple[SkillForm, ObjectInfo]] = {}
        for name, (form, info) in unfolded.items():
            entry = _parse_entry(own.get(layout.skill_catalog_entry_key(user_id, name)))
            if entry is not None and entry.form == form and entry.etag == info.etag:
                found[name] = entry
            else:
                unread[name] = (form, info)
        have = bodies or {}
        mains = get_many(self.store, [info.key for _, info in unread.values() if info.key not in have])
        for name, (form, info) in unread.items():
            obj = mains.get(info.key)
            if info.key in have:
                found[name] = describe_main(name, form, info, have[info.key])
            elif obj is not None:
                found[name] = describe_main(name, form, obj.info, obj.body)
            # else: deleted since the listing; the next list will not show it
        return found

    def _remember(self, user_id: str, entries: Iterable[CatalogEntry], *, whole: bool = True) -> None:
        prefix = layout.skills_prefix(user_id)
        with self._lock:
            if whole:
                self._users[user_id] = None
                self._users.move_to_end(user_id)
            for entry in entries:
                key = (prefix + main_path(entry.name, entry.form), entry.etag)
                self._remembered[key] = entry
                self._remembered.move_to_end(key)
            while len(self._remembered) > self.max_remembered:
                self._remembered.popitem(last=False)
            while len(self._users) > self.max_remembered:
                self._users.popitem(last=False)

    def fold(self, user_id: str, loaded: LoadedCatalog | None, entries: dict[str, CatalogEntry],
             listed: Iterable[str] | None) -> None:
        """Rewrite the folded catalog (`loaded`, or read now) with `entries`; with `listed` (every
        skill name of a full listing), drop the entries of skills that are gone. Opportunistic:
        a concurrent writer or a storage fault leaves the old one, and the next reader folds again."""
        keep = set(listed) if listed is not None else None
        try:
            current = loaded if loaded is not None else self.load(user_id)
        except StorageError as exc:
            log.warning("skills catalog of %s not read to fold (the next reader folds again): %s", user_id, exc)
            return
        for _ in range(_FOLD_ATTEMPTS):
            merged = dict(current.document.entries)
            merged.update(entries)
            if keep is not None:
                merged = {n: e for n, e in merged.items() if n in keep}
            if merged == current.document.entries and current.etag is not None:
                return
            try:
                self._save(user_id, CatalogDocument(entries=dict(sorted(merged.items()))), current.etag)
                return
            except (PreconditionFailed, ObjectNotFound):
                pass  # another reader folded first: fold into its version
            except StorageError as exc:
                log.warning("skills catalog of %s not rewritten (the next list folds again): %s", user_id, exc)
                return
            try:
                current = self.load(user_id)
            except StorageError as exc:
                log.warning("skills catalog of %s not read again to fold: %s", user_id, exc)
                return

    def _save(self, user_id: str, document: CatalogDocument, etag: str | None) -> None:
        key = layout.skill_catalog_key(user_id)
        if not document.entries:
            if etag is not None:
                self.store.delete(key)
            return
        self.store.put(key, document.model_dump_json(by_alias=True).encode(), content_type="application/json",
                       if_match=etag, if_none_match=etag is None)


def _parse_entry(obj: object) -> CatalogEntry | None:
    body = getattr(obj, "body", None)
    if body is None:
        return None
    try:
        return CatalogEntry.model_validate_json(body)
    except ValidationError:
        return None
