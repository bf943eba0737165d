"""Skills: upload, list, read and delete a user's skills in both forms.

    users/{userId}/skills/debugging.md                  flat (the original's form)
    users/{userId}/skills/pdf-tools/SKILL.md (+ files)  Agent Skills folder
"""

from __future__ import annotations

import builtins
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import Field

from chalicelib.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ServiceUnavailable,
    ValidationFailed,
)
from chalicelib.ids import validate_id, validate_skill_path
from chalicelib.services.models import ApiModel
from chalicelib.services.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from chalicelib.services.skill_catalog import LoadedCatalog, SkillCatalog, describe_main
from chalicelib.services.skill_folders import FolderLease, SkillFolders, manifest_etag
from chalicelib.services.skill_format import (
    NAME_PATTERN,
    SKILL_FILE,
    check_frontmatter,
    describe,
    validate_skill_md,
)
from chalicelib.storage import ObjectNotFound, ObjectStore, StorageError, StorageFull, layout
from chalicelib.storage import PreconditionFailed as StoragePreconditionFailed
from chalicelib.storage.base import ObjectInfo, get_many
from chalicelib.storage.cache import BodyCache
from chalicelib.storage.listing import iter_all

log = logging.getLogger(__name__)

MAX_SKILL_FILE_BYTES = 1024 * 1024
MAX_SKILL_FILES = 100
SANDBOX_SKILLS_DIR = "/workspace/.claude/skills"
_MISSING = "Skill name and content are required"

SkillForm = Literal["flat", "folder"]


class SkillUpload(ApiModel):
    """`{name, content}` (the original's) or `{name, files: {path: content}}` (a folder)."""

    name: str | None = None
    content: str | None = None
    files: dict[str, str] | None = None


class SkillUploaded(ApiModel):
    status: Literal["success"] = "success"
    user_id: str
    skill_name: str
    key: str
    message: str
    form: SkillForm
    files: list[str]


class SkillItem(ApiModel):
    name: str
    form: SkillForm
    path: str
    size: int
    updated: datetime | None
    description: str
    #: Why a file stored behind the API breaks the rules (an upload would have been refused); else null.
    error: str | None = None


class SkillList(ApiModel):
    user_id: str
    skills: list[str]
    count: int
    items: list[SkillItem]
    next_cursor: str | None


class SkillDetail(ApiModel):
    user_id: str
    skill_name: str
    content: str
    metadata: dict[str, str]
    uploaded: datetime
    size: int
    form: SkillForm
    description: str
    files: dict[str, str] = Field(default_factory=dict)


@dataclass
class _Listed:
    """One skill as a listing shows it: its main file (None: a folder without SKILL.md) and its last key."""

    name: str
    form: SkillForm
    main: ObjectInfo | None = None
    last_key: str = ""


class SkillDeleted(ApiModel):
    status: Literal["deleted"] = "deleted"
    user_id: str
    skill_name: str
    key: str


def skill_form(name: str) -> SkillForm:
    """Names ending in .md are flat files; anything else names an Agent Skills folder."""
    return "flat" if name.endswith(".md") else "folder"


def _check_name(name: str) -> SkillForm:
    if skill_form(name) == "flat":
        validate_skill_path(name, "skill name")
        if "/" in name:
            raise BadRequest(f"Flat skill name {name!r} must not contain '/'.", code="invalid_skill_name")
        return "flat"
    if len(name) > 64 or not NAME_PATTERN.match(name):
        raise BadRequest(
            f"Invalid skill name {name!r}: a flat skill ends in '.md' (e.g. 'debugging.md'); an Agent Skill "
            "folder name is 1-64 lowercase letters, digits and single hyphens (e.g. 'pdf-tools').",
            code="invalid_skill_name",
        )
    return "folder"


def _encode(path: str, content: str) -> bytes:
    data = content.encode("utf-8")
    if len(data) > MAX_SKILL_FILE_BYTES:
        raise PayloadTooLarge(
            f"Skill file {path!r} is {len(data)} bytes; the limit is {MAX_SKILL_FILE_BYTES} bytes (1 MiB) per file.",
            code="skill_file_too_large",
        )
    return data


class SkillsService:
    """The user's skills in object storage."""

    def __init__(self, store: ObjectStore, cache: BodyCache | None = None) -> None:
        self.store = store
        # Bodies this process wrote, for setup here to load without reading them back.
        self.cache = cache or BodyCache()
        self.catalog = SkillCatalog(store)
        self.folders = SkillFolders(store)

    def upload(self, user_id: str, upload: SkillUpload, if_match: str | None = None, if_none_match: bool = False) -> tuple[SkillUploaded, str]:
        """Store a skill, replacing it entirely; return the response and the main file's ETag."""
        validate_id(user_id, "userId")
        if not upload.name or (upload.content is None and upload.files is None):
            raise BadRequest(_MISSING, code="missing_fields")
        if upload.content is not None and upload.files is not None:
            raise BadRequest("Send either 'content' or 'files', not both.", code="ambiguous_skill_body")
        name = upload.name
        form = _check_name(name)
        if form == "flat":
            if upload.files is not None:
                raise BadRequest(
                    f"{name!r} is a flat skill (it ends in .md): send 'content', or drop '.md' to upload a folder.",
                    code="ambiguous_skill_body",
                )
            files = {name: _encode(name, upload.content or "")}
            main = name
            check_frontmatter(upload.content or "")
        else:
            raw = upload.files if upload.files is not None else {SKILL_FILE: upload.content or ""}
            if not raw:
                raise BadRequest(_MISSING, code="missing_fields")
            if len(raw) > MAX_SKILL_FILES:
                raise PayloadTooLarge(f"A skill may have at most {MAX_SKILL_FILES} files; this one has {len(raw)}.", code="too_many_skill_files")
            files = {}
            for path, content in raw.items():
                validate_skill_path(path)
                files[f"{name}/{path}"] = _encode(path, content)
            main = f"{name}/{SKILL_FILE}"
            if main not in files:
                raise ValidationFailed(
                    f"An Agent Skill folder needs a {SKILL_FILE}: add 'files': {{'{SKILL_FILE}': '---\\nname: {name}\\n"
                    "description: ...\\n---\\n...'}, or name the skill '<name>.md' for a flat file.",
                    code="missing_skill_md",
                )
            try:
                validate_skill_md(files[main].decode(), name)
            except ValidationFailed as exc:
                if upload.files is None and "must start with YAML frontmatter" in exc.message:
                    raise ValidationFailed(
                        f"{exc.message} Skill {name!r} has no '.md' extension, so it is stored as an Agent Skill "
                        f"folder ({name}/SKILL.md). To upload a plain markdown skill, name it '{name}.md'.",
                        code=exc.code,
                    ) from None
                raise

        # A folder is written by one request at a time (see skill_folders), so the stale-file
        # list taken here is still true when the files are deleted.
        lease = self.folders.acquire(user_id, name) if form == "folder" else None
        try:
            info = self._write_files(user_id, name, form, main, files, if_match, if_none_match, lease)
        except StorageFull as exc:
            raise ServiceUnavailable(
                f"Storage is full ({exc}): skill {name!r} was not written, and its previous version (if any) is "
                "still the one listed and served. Free space, or raise the store's capacity, then retry.",
                code="storage_full",
            ) from exc
        finally:
            if lease is not None:
                lease.release()
        key = layout.skill_key(user_id, main if form == "flat" else name)
        return (
            SkillUploaded(
                user_id=user_id,
                skill_name=name,
                key=key,
                message=f"Skill {name} uploaded for user {user_id}",
                form=form,
                files=[layout.skill_key(user_id, p) for p in files],
            ),
            info.etag,
        )

    def _write_files(
        self, user_id: str, name: str, form: SkillForm, main: str, files: dict[str, bytes],
        if_match: str | None, if_none_match: bool, lease: FolderLease | None,
    ) -> ObjectInfo:
        """Write the files (a folder: then its manifest, then drop the replaced files), then the
        skill's catalog entry; the main file's info.

        A folder whose write fails (a full disk, a refused write) is put back as it was: files
        it added are deleted and files it replaced get their old bodies again, so its previous
        manifest still describes it and a partial folder is never listed or served.
        """
        stale: list[str] = []
        previous: dict[str, bytes] = {}
        placeholder = False
        if form == "folder" and lease is not None:
            folder = layout.skill_key(user_id, name) + "/"
            manifest_key = layout.skill_manifest_key(user_id, name)
            wanted = {layout.skill_key(user_id, p) for p in files} | {manifest_key}
            existing = [o.key for o in iter_all(self.store, folder)]
            stale = [k for k in existing if k not in wanted]
            replaced = [layout.skill_key(user_id, p) for p in files if layout.skill_key(user_id, p) in existing]
            previous = {k: o.body for k, o in get_many(self.store, replaced).items() if o is not None}
            if manifest_key not in existing:
                # Readers take a folder without a manifest as every file under it, so they would
                # see this upload half-written: an empty manifest first hides it from them until
                # the upload's own manifest names its files.
                self.store.put(manifest_key, self.folders.manifest_body(lease.upload_id, {}), content_type="application/json")
                placeholder = True
        written: dict[str, ObjectInfo] = {}
        try:
            info = self._write_main(name, layout.skill_key(user_id, main), files[main], if_match, if_none_match)
            written[layout.skill_key(user_id, main)] = info
            if lease is not None:
                self._write_rest(user_id, name, main, files, written, lease)
        except Exception:
            if lease is not None:
                self._put_back(user_id, name, list(written), previous, placeholder=placeholder)
            raise
        if stale:
            self.store.delete_many(stale)
        for key, written_info in written.items():
            body = files.get(key[len(layout.skills_prefix(user_id)):])
            if body is not None:
                self.cache.remember(key, written_info.etag, body)
        try:
            self.catalog.record(user_id, describe_main(name, form, info, files[main]))
        except StorageError as exc:
            # The skill is stored: the list describes it from its file and folds it in.
            log.warning("catalog entry of skill %s of %s not written (the list will describe it): %s", name, user_id, exc)
        return info

    def _write_main(self, name: str, key: str, body: bytes, if_match: str | None, if_none_match: bool) -> ObjectInfo:
        """The skill's main file, under the client's precondition (412 when it does not hold)."""
        try:
            return self.store.put(key, body, content_type="text/markdown; charset=utf-8",
                                  if_match=if_match, if_none_match=if_none_match)
        except StoragePreconditionFailed:
            raise PreconditionFailed(
                f"Skill {name!r} " + ("already exists (If-None-Match: *)." if if_none_match else "changed since you read it (If-Match).")
                + " GET it for the current ETag and retry.",
            ) from None
        except ObjectNotFound:  # S3 answers If-Match on a missing key with 404
            raise PreconditionFailed(f"Skill {name!r} does not exist, so If-Match cannot match: drop If-Match to create it.") from None

    def _write_rest(self, user_id: str, name: str, main: str, files: dict[str, bytes],
                    written: dict[str, ObjectInfo], lease: FolderLease) -> None:
        """A folder's other files, then its manifest (last: it is what readers trust)."""
        extras = [p for p in files if p != main]
        if extras:
            with ThreadPoolExecutor(max_workers=min(16, len(extras))) as pool:
                futures = {p: pool.submit(self.store.put, layout.skill_key(user_id, p), files[p], content_type=_content_type(p))
                           for p in extras}
                failure: BaseException | None = None
                for p, future in futures.items():
                    try:
                        written[layout.skill_key(user_id, p)] = future.result()
                    except Exception as exc:  # noqa: BLE001 - re-raised below, after every write ended
                        failure = failure or exc
                if failure is not None:
                    raise failure
        folder_len = len(layout.skill_key(user_id, name)) + 1
        manifest = self.folders.manifest_body(lease.upload_id, {k[folder_len:]: i.etag for k, i in written.items()})
        manifest_key = layout.skill_manifest_key(user_id, name)
        info = self.store.put(manifest_key, manifest, content_type="application/json")
        self.cache.remember(manifest_key, info.etag, manifest)

    def _put_back(self, user_id: str, name: str, written: list[str], previous: dict[str, bytes], *,
                  placeholder: bool) -> None:
        """Undo a folder upload that failed half-way (best effort: deletes free space first).

        A reader that read the folder half-written must read it again: the manifest the upload
        put up empty goes, and a manifest the folder had is written anew (same files, a new
        ETag), which tells that reader the folder changed since its listing (see skill_folders).
        """
        added = [k for k in written if k not in previous]
        if placeholder:
            added.append(layout.skill_manifest_key(user_id, name))
        try:
            if added:
                self.store.delete_many(added)
            for key in written:
                if key in previous:
                    self.store.put(key, previous[key], content_type=_content_type(key))
            if written and not placeholder:
                self.folders.renew_manifest(user_id, name)
        except StorageError as exc:
            log.error("folder upload of %s failed and could not be undone (%s): its previous manifest still "
                      "tells readers which files are its own", user_id, exc)

    def list(self, user_id: str, limit: int = MAX_LIMIT, cursor: str | None = None) -> SkillList:
        """One page of skills: flat files and folders, in name order, each counted once.

        A page is one listing of the skills folder (the truth: which skills exist, and each
        main file's ETag), and the descriptions worked out at upload, which this process holds
        in memory once it has read them (see skill_catalog); a process that does not yet reads
        the user's catalog alongside the listing.
        """
        prefix = layout.skills_prefix(user_id)
        state = decode_cursor(cursor)
        after = state.get("a") if state else None
        if state is not None and not (isinstance(after, str) and 0 < len(after) <= 1024):
            raise BadRequest("Invalid or expired cursor: start again without it.", code="invalid_cursor")
        loaded: LoadedCatalog | None = None
        if self.catalog.knows(user_id):
            listed, next_after = self._listed(prefix, after, limit)
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                catalog_f = pool.submit(self.catalog.load, user_id)  # alongside the listing, not after it
                listed, next_after = self._listed(prefix, after, limit)
                loaded = catalog_f.result()
        wanted = {g.name: (g.form, g.main) for g in listed if g.main is not None}
        entries, _ = self.catalog.resolve(user_id, wanted, loaded)
        items = []
        for group in sorted(listed, key=lambda g: g.name):
            is_folder = group.form == "folder"
            entry = entries.get(group.name)
            info = group.main
            items.append(
                SkillItem(
                    name=group.name,
                    form=group.form,
                    path=f"{SANDBOX_SKILLS_DIR}/{group.name}/{SKILL_FILE}" if is_folder else f"{SANDBOX_SKILLS_DIR}/{group.name}",
                    size=info.size if info else 0,
                    updated=info.last_modified if info else None,
                    description=entry.description if entry else "",
                    error=entry.error if entry else (f"The folder has no {SKILL_FILE}." if is_folder else None),
                )
            )
        return SkillList(
            user_id=user_id,
            skills=[i.name for i in items],
            count=len(items),
            items=items,
            next_cursor=encode_cursor({"a": next_after}) if next_after else None,
        )

    def _listed(self, prefix: str, after: str | None, limit: int) -> tuple[builtins.list[_Listed], str | None]:
        """Up to `limit` whole skills listed after the key `prefix + after`, in key order, and
        the `after` of the next page (None on the last).

        The listing is not delimited, so each folder's SKILL.md and its ETag are seen; a folder
        cut off by the end of a listing page is left to the next one (read on only when a
        single folder fills the page).
        """
        groups: builtins.list[_Listed] = []
        token: str | None = None
        max_keys = min(MAX_LIMIT, max(4 * limit, 64))
        while True:
            try:
                page = self.store.list(prefix, max_keys=max_keys, start_after=prefix + after if after and token is None else None,
                                       continuation_token=token)
            except StorageError as exc:
                if after is None:
                    raise
                raise BadRequest("Invalid or expired cursor: start again without it.", code="invalid_cursor") from exc
            for obj in page.objects:
                name, slash, inner = obj.key[len(prefix):].partition("/")
                form: SkillForm = "folder" if slash else "flat"
                if not groups or groups[-1].name != name or groups[-1].form != form:
                    groups.append(_Listed(name, form))
                group = groups[-1]
                group.last_key = obj.key
                if form == "flat" or inner == SKILL_FILE:
                    group.main = obj
            whole = groups if page.next_token is None or groups[-1].form == "flat" else groups[:-1]
            if page.next_token is None or whole:
                break
            token = page.next_token  # one folder bigger than a listing page: read on
        more = page.next_token is not None or len(whole) > limit
        taken = whole[:limit]
        return taken, (taken[-1].last_key[len(prefix):] if more and taken else None)

    def get(self, user_id: str, name: str) -> tuple[SkillDetail, str]:
        """The skill's main file (and a folder's other files); 404 if there is none."""
        form = _check_name(name)
        if form == "flat":
            try:
                obj = self.store.get(layout.skill_key(user_id, name))
            except ObjectNotFound:
                raise NotFound("Skill not found", code="skill_not_found") from None
            text = obj.body.decode("utf-8", "replace")
            return (
                SkillDetail(
                    user_id=user_id, skill_name=name, content=text, metadata={"contentType": obj.content_type},
                    uploaded=obj.info.last_modified, size=obj.info.size, form="flat",
                    description=describe(text, is_skill_md=False),
                ),
                obj.info.etag,
            )
        folder = layout.skill_key(user_id, name) + "/"
        listed = iter_all(self.store, folder)
        keys = [o.key for o in listed]
        main_key = folder + SKILL_FILE
        if main_key not in keys:
            raise NotFound("Skill not found", code="skill_not_found")
        objects = {k: o for k, o in get_many(self.store, keys).items() if o is not None}
        # The folder as its last upload committed it: never half of a concurrent upload, nor a
        # mix of the listing before an upload and the bodies after it.
        infos, bodies = self.folders.committed(
            user_id, name, [o.info for o in objects.values()], {k: o.body for k, o in objects.items()},
            listed_manifest=manifest_etag(user_id, name, listed),
        )
        main_info = next((i for i in infos if i.key == main_key), None)
        if main_info is None or main_key not in bodies:
            raise NotFound("Skill not found", code="skill_not_found")
        main_object = objects.get(main_key)
        text = bodies[main_key].decode("utf-8", "replace")
        return (
            SkillDetail(
                user_id=user_id, skill_name=name, content=text,
                metadata={"contentType": main_object.content_type if main_object else "text/markdown; charset=utf-8"},
                uploaded=main_info.last_modified, size=main_info.size, form="folder",
                description=describe(text, is_skill_md=True),
                files={k[len(folder):]: b.decode("utf-8", "replace") for k, b in sorted(bodies.items()) if k != main_key},
            ),
            main_info.etag,
        )

    def delete(self, user_id: str, name: str) -> SkillDeleted:
        """Delete a flat file or a whole folder; 404 if there is nothing."""
        form = _check_name(name)
        if form == "flat":
            key = layout.skill_key(user_id, name)
            try:
                self.store.head(key)
            except ObjectNotFound:
                raise NotFound("Skill not found", code="skill_not_found") from None
            self.store.delete(key)
            self.catalog.forget(user_id, name)
        else:
            key = layout.skill_key(user_id, name)
            lease = self.folders.acquire(user_id, name)  # not under an upload's feet
            try:
                keys = [o.key for o in iter_all(self.store, key + "/")]
                if not keys:
                    raise NotFound("Skill not found", code="skill_not_found")
                self.store.delete_many(keys)
                self.catalog.forget(user_id, name)
            finally:
                lease.release()
        return SkillDeleted(user_id=user_id, skill_name=name, key=key)


def _content_type(path: str) -> str:
    return "text/markdown; charset=utf-8" if path.endswith(".md") else "text/plain; charset=utf-8"
