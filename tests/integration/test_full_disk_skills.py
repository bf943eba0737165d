"""Issue 21, row 6: a folder upload that finds the disk full fails whole.

DATA_DIR on a tiny tmpfs (mounted here as root, unmounted after). A folder upload whose second
file does not fit used to answer 500 and leave its SKILL.md behind, listed and served. Now the
upload puts the folder back as it was: a new folder is not there at all, a replaced one is
served, listed and loaded exactly as its previous upload (its manifest) left it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_setup import sandbox_of
from tests.support.api import Api, make_api
from tests.support.tmpfs import fill, tiny_tmpfs

SKILL_V1 = "---\nname: pdf-tools\ndescription: Version one. Use for PDFs.\n---\n# One\n"
SKILL_V2 = "---\nname: pdf-tools\ndescription: Version two. Use for PDFs.\n---\n# Two\n"
BIG = "x" * 900_000  # under the 1 MiB file limit, over what the disk has left


@pytest.fixture
def full_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    with tiny_tmpfs(tmp_path / "data", "2m"):
        yield make_api("local", tmp_path, monkeypatch, None)


def skill_keys(api: Api) -> dict[str, str]:
    return {k: v for k, v in api.keys().items() if k.startswith("users/u/skills/")}


def test_a_new_folder_that_does_not_fit_is_not_there_at_all(full_api: Api) -> None:
    fill(full_api.data_dir, leave=128 * 1024)
    r = full_api.post("/users/u/skills", {"name": "pdf-tools", "files": {"SKILL.md": SKILL_V1, "big.txt": BIG}})
    assert r.status_code == 503 and r.json_body["code"] == "storage_full", r.json_body
    assert skill_keys(full_api) == {}
    assert full_api.get("/users/u/skills").json_body["skills"] == []
    assert full_api.get("/users/u/skills/pdf-tools").status_code == 404


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (setup loads the skills into a sandbox)")
def test_a_replaced_folder_that_does_not_fit_stays_as_it_was(full_api: Api) -> None:
    first = full_api.post("/users/u/skills", {"name": "pdf-tools", "files": {"SKILL.md": SKILL_V1, "notes.txt": "one"}})
    assert first.status_code == 200, first.json_body
    before = skill_keys(full_api)
    fill(full_api.data_dir, leave=128 * 1024)
    r = full_api.post("/users/u/skills", {"name": "pdf-tools",
                                           "files": {"SKILL.md": SKILL_V2, "notes.txt": "two", "big.txt": BIG}})
    assert r.status_code == 503 and r.json_body["code"] == "storage_full", r.json_body
    after = skill_keys(full_api)
    manifest = "users/u/skills/pdf-tools/.skill-manifest.json"
    # The same files with the same ETags; the manifest, naming them, is written anew (a reader
    # that read the folder half-written reads it again).
    assert {k: e for k, e in after.items() if k != manifest} == {k: e for k, e in before.items() if k != manifest}
    assert after.keys() == before.keys()
    detail = full_api.get("/users/u/skills/pdf-tools").json_body
    assert detail["content"] == SKILL_V1 and detail["files"] == {"notes.txt": "one"}
    [item] = full_api.get("/users/u/skills").json_body["items"]
    assert item["description"].startswith("Version one") and item["error"] is None
    assert full_api.post("/setup/full1?userId=u").status_code == 200
    sandbox = sandbox_of("full1")
    assert sandbox.read_file("/workspace/.claude/skills/pdf-tools/SKILL.md").decode() == SKILL_V1
    assert sandbox.read_file("/workspace/.claude/skills/pdf-tools/notes.txt") == b"one"
