"""Loading a user's skills for a session: the files, their descriptions, and the derived copies.

Setup reads the skills listing (the truth) with the bundle (`skill_bundle`: copies of the small
files) and the catalog (`skill_catalog`: what each skill's upload worked out); this module turns
them into the files a sandbox gets (folders as their manifests commit them), the descriptions
the skill index shows, and the rewrites that bring the bundle and the catalog up to date.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from chalicelib.errors import ServiceUnavailable
from chalicelib.sandbox.base import MOUNT_DIR, Sandbox, SandboxError, SandboxGone
from chalicelib.services.skill_bundle import LoadedBundle, SkillBundle
from chalicelib.services.skill_catalog import LoadedCatalog, SkillCatalog, main_files, main_path
from chalicelib.services.skill_folders import SkillFolders
from chalicelib.services.skill_index import is_main_file
from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.base import ObjectInfo
from chalicelib.storage.cache import BodyCache

SKILLS_DIR = MOUNT_DIR


@dataclass(frozen=True)
class SkillFiles:
    """The user's skill files: `files` by sandbox path (what the sandbox gets), `bodies` by
    storage key (what they came from), and whether the bundle was behind and can be rewritten
    from these bodies."""

    files: dict[str, bytes]
    bodies: dict[str, bytes]
    bundle_stale: bool


class SkillLoader:
    """Reads, describes and writes one user's skills for a sandbox."""

    def __init__(self, store: ObjectStore, cache: BodyCache, catalog: SkillCatalog) -> None:
        self.store = store
        self.cache = cache
        self.catalog = catalog
        self.bundle = SkillBundle(store)
        self.folders = SkillFolders(store)

    def read(self, user_id: str, listing: list[ObjectInfo], bundle: LoadedBundle, *,
             mains_only: bool = False) -> SkillFiles:
        """The user's skill files as the sandbox gets them, and the bodies they came from.

        Bodies come from the bundle where its ETags match the listing, then from this
        process's cache, and only then from storage, all of those in one parallel batch.
        `mains_only` (a mounted session) fetches just what the skill index needs.
        """
        prefix = layout.skills_prefix(user_id)
        match = self.bundle.match(user_id, listing, bundle)
        missing = match.missing
        if mains_only:
            missing = [i for i in missing if is_main_file(f"{SKILLS_DIR}/{i.key[len(prefix):]}")]
        read = self.cache.read_many(self.store, missing)
        bodies = {**match.bodies, **{key: body for key, (body, _) in read.items()}}
        # Folders are served as their manifest commits them (a concurrent upload is never half
        # seen), judged by the versions actually read: an object rewritten since the listing
        # was read in its newer version.
        listed = {i.key: i.etag for i in missing}
        moved = {key: etag for key, (_, etag) in read.items() if listed[key] != etag}
        bodies_to_load = self.folders.committed_skill_files(user_id, listing, bodies, moved=moved)
        files = {f"{SKILLS_DIR}/{key[len(prefix):]}": body for key, body in bodies_to_load.items()}
        # A mounted session fetched only the main files: the bundle can be rewritten from these
        # bodies only if nothing else was missing (else it would lose the other files' entries).
        complete = len(missing) == len(match.missing)
        return SkillFiles(files, bodies, match.stale and complete)

    def describe(self, user_id: str, listing: list[ObjectInfo], loaded: LoadedCatalog | None,
                  bodies: dict[str, bytes]) -> tuple[dict[str, str], Callable[[], None] | None]:
        """(sandbox path -> description) of every skill, from the catalog where it matches the
        listing; the others are described from the bodies in hand (no request). Also the
        catalog's repair when it was behind or holds skills that are gone, else None.
        `loaded` is None when this process remembers the user's entries (see skill_catalog)."""
        mains = main_files(user_id, listing)
        entries, behind = self.catalog.resolve(user_id, mains, loaded, bodies, fold=False)
        described = {f"{SKILLS_DIR}/{main_path(n, e.form)}": e.description for n, e in entries.items()}
        gone = loaded is not None and any(n not in mains for n in loaded.document.entries)
        if not behind and not gone:
            return described, None
        return described, lambda: self.catalog.fold(user_id, loaded, entries, listed=mains)

    def write(self, sandbox: Sandbox, user_id: str, listing: list[ObjectInfo], bundle: LoadedBundle,
              skill_files: SkillFiles) -> list[str]:
        """Copy every skill file in, keeping its form (flat .md or folder/SKILL.md + files)."""
        files, bodies, stale = skill_files.files, skill_files.bodies, skill_files.bundle_stale
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The repair (a storage write) overlaps the sandbox writes.
            repair = pool.submit(self.bundle.repair, user_id, listing, bodies, bundle) if stale else None
            try:
                # Start from an empty folder so skills deleted since the last setup disappear.
                sandbox.delete_file(SKILLS_DIR)
                to_write: dict[str, bytes | str] = dict(files)
                sandbox.write_files(to_write)
            except SandboxGone:
                raise
            except SandboxError as exc:
                raise ServiceUnavailable(f"Loading skills into the sandbox failed: {exc}", code="sandbox_failed") from exc
            finally:
                if repair is not None:
                    repair.result()
        return sorted(files)
