"""The skill index: name, description and path of each skill, as the system prompt lists them.

Built once per session by /setup from the bodies setup already holds, kept in the session
record and the session state, and rebuilt only when a listing of the skills folder shows that
the main files changed. Rebuilding it per message cost one sandbox round trip per skill.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from pydantic import Field

from chalicelib.sandbox.base import MOUNT_DIR as SKILLS_DIR
from chalicelib.services.models import ApiModel
from chalicelib.services.skill_format import SKILL_FILE, describe

MAX_INDEXED = 200
MAX_READ = 64 * 1024


class SkillEntry(ApiModel):
    """One skill as the model sees it; `size` is its main file's, to notice edits."""

    name: str
    description: str
    path: str
    size: int


class SkillIndex(ApiModel):
    """The index and the fingerprint of the listing it was built from."""

    entries: list[SkillEntry] = Field(default_factory=list)
    fingerprint: str
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def is_main_file(path: str) -> bool:
    """A flat `skills/<name>.md`, or a folder's `skills/<name>/SKILL.md`."""
    if not path.startswith(SKILLS_DIR + "/"):
        return False
    rest = path[len(SKILLS_DIR) + 1 :].split("/")
    return (len(rest) == 1 and rest[0].endswith(".md")) or (len(rest) == 2 and rest[1] == SKILL_FILE)


def fingerprint(mains: Iterable[tuple[str, int]]) -> str:
    """A digest of the main files' paths and sizes: what a listing can tell cheaply."""
    digest = hashlib.sha256()
    for path, size in sorted(mains):
        digest.update(f"{path}\0{size}\n".encode())
    return digest.hexdigest()


def entry(path: str, body: bytes, description: str | None = None) -> SkillEntry:
    """The index entry of one main file; `description` when it was worked out already (the catalog)."""
    is_folder = path.endswith("/" + SKILL_FILE)
    name = path.split("/")[-2] if is_folder else path.split("/")[-1]
    if description is None:
        description = describe(body[:MAX_READ].decode("utf-8", "replace"), is_skill_md=is_folder)
    return SkillEntry(name=name, description=description, path=path, size=len(body))


def build_index(files: Mapping[str, bytes], described: Mapping[str, str] | None = None) -> SkillIndex:
    """The index of the main files among `files` (sandbox path -> body), in path order.

    `described` (sandbox path -> description, from the skills catalog) spares parsing them again."""
    mains = sorted(p for p in files if is_main_file(p))
    known = described or {}
    return SkillIndex(
        entries=[entry(p, files[p], known.get(p)) for p in mains[:MAX_INDEXED]],
        fingerprint=fingerprint((p, len(files[p])) for p in mains),
    )
