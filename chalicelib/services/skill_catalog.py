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
    """Each skill of a full (undelimited) listing, by name, with its main file's info."""
    prefix = layout.skills_prefix(user_id)
    found: dict[str, tuple[SkillForm, ObjectInfo]] = {}
    for info in listing:
        parts = info.key[len(prefix):].split("/")
        if len(parts) == 1 and parts[0].endswith(".md"):
            found[parts[0]] = ("flat", info)
        elif len(parts) == 2 and parts[1] == SKILL_FILE:
            found[parts[0]] = ("folder", info)
    return found


class SkillCatalog:
    """Reads, writes and folds one user's catalog."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def record(self, user_id: str, entry: CatalogEntry) -> None:
        """After an upload: its own entry (small, whatever the number of skills)."""
        self.store.put(layout.skill_catalog_entry_key(user_id, entry.name), entry.model_dump_json(by_alias=True).encode(),
                       content_type="application/json")

    def forget(self, user_id: str, name: str) -> None:
        """After a delete: the skill's own entry goes (the folded one is dropped by the next fold)."""
        self.store.delete(layout.skill_catalog_entry_key(user_id, name))

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

    def resolve(self, user_id: str, wanted: dict[str, tuple[SkillForm, ObjectInfo | None]],
                loaded: LoadedCatalog, bodies: dict[str, bytes] | None = None, *,
                fold: bool = True) -> tuple[dict[str, CatalogEntry], bool]:
        """The entry of each wanted skill (name -> form and its main file's listed info, None when
        the listing does not show it, as for a folder in a delimited listing).

        Entries the catalog holds for the listed ETag are used as they are. The others come
        from the uploads' own entries, else from the main files (`bodies`, keyed by storage
        key, or read), described once; then the catalog is folded and rewritten.
        """
        prefix = layout.skills_prefix(user_id)
        found: dict[str, CatalogEntry] = {}
        behind: dict[str, tuple[SkillForm, ObjectInfo | None]] = {}
        for name, (form, info) in wanted.items():
            entry = loaded.document.entries.get(name)
            if entry is not None and entry.form == form and (info is None or entry.etag == info.etag):
                found[name] = entry
            else:
                behind[name] = (form, info)
        if not behind:
            return found, False
        own = {} if bodies is not None else get_many(self.store, [layout.skill_catalog_entry_key(user_id, n) for n in behind])
        unread: dict[str, tuple[SkillForm, ObjectInfo | None]] = {}
        for name, (form, info) in behind.items():
            entry = _parse_entry(own.get(layout.skill_catalog_entry_key(user_id, name)))
            if entry is not None and entry.form == form and (info is None or entry.etag == info.etag):
                found[name] = entry
            else:
                unread[name] = (form, info)
        have = bodies or {}
        mains = get_many(self.store, [prefix + main_path(n, f) for n, (f, _) in unread.items()
                                      if prefix + main_path(n, f) not in have or unread[n][1] is None])
        for name, (form, info) in unread.items():
            key = prefix + main_path(name, form)
            obj = mains.get(key)
            if obj is not None:
                found[name] = describe_main(name, form, obj.info, obj.body)
            elif key in have and info is not None:
                found[name] = describe_main(name, form, info, have[key])
            # else: gone since the listing (a folder without SKILL.md lists nothing to describe)
        if fold:
            self.fold(user_id, loaded, {n: found[n] for n in behind if n in found}, listed=None)
        return found, True

    def fold(self, user_id: str, loaded: LoadedCatalog, entries: dict[str, CatalogEntry],
             listed: Iterable[str] | None) -> None:
        """Rewrite the folded catalog with `entries`; with `listed` (every skill name of a full
        listing), drop the entries of skills that are gone. Opportunistic: a concurrent writer
        or a storage fault leaves the old one, and the next reader folds again."""
        keep = set(listed) if listed is not None else None
        current = loaded
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
                current = self.load(user_id)  # another reader folded first: fold into its version
            except StorageError as exc:
                log.warning("skills catalog of %s not rewritten (the next list folds again): %s", user_id, exc)
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
