"""The skills catalog: listing fields worked out once, at upload, and never trusted over the listing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.services.skill_catalog import CatalogDocument, SkillCatalog, describe_main
from chalicelib.services.skills import SkillsService, SkillUpload
from chalicelib.storage import StorageUnavailable, layout
from chalicelib.storage.listing import iter_all
from chalicelib.storage.local import LocalDirectoryStore

USER = "alice"
PREFIX = layout.skills_prefix(USER)
DEEP = "---\nname: deep\ndescription: " + "[" * 500 + "]" * 500 + "\n---\n# Deep\n\nStill has a body."
SKILL_MD = "---\nname: pdf-tools\ndescription: Fill PDF forms. Use for PDFs.\n---\n# PDF\n"


@pytest.fixture
def store(tmp_path: Path) -> LocalDirectoryStore:
    return LocalDirectoryStore(tmp_path / "data")


def test_a_file_that_breaks_the_rules_is_described_with_its_error_never_raised(store: LocalDirectoryStore) -> None:
    info = store.put(PREFIX + "deep.md", DEEP.encode())
    entry = describe_main("deep.md", "flat", info, DEEP.encode())
    assert entry.error is not None and "deeper than" in entry.error
    assert entry.description  # the heading and first paragraph, as for any markdown
    folder = store.put(PREFIX + "tools/SKILL.md", b"---\nname: other\ndescription: d\n---\n")
    assert "must equal its folder name" in (describe_main("tools", "folder", folder, b"---\nname: other\ndescription: d\n---\n").error or "")


def test_uploads_write_their_own_entry_and_nothing_that_grows(store: LocalDirectoryStore) -> None:
    skills = SkillsService(store)
    for i in range(5):
        skills.upload(USER, SkillUpload(name=f"s{i}.md", content=f"# Skill {i}\n\nDoes {i}."))
    keys = [o.key for o in iter_all(store, layout.user_prefix(USER))]
    assert layout.skill_catalog_key(USER) not in keys and layout.skills_bundle_key(USER) not in keys
    assert sum(k.startswith(f"users/{USER}/cache/skill-catalog/") for k in keys) == 5


def test_the_list_folds_the_entries_once_then_reads_one_catalog(store: LocalDirectoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    skills = SkillsService(store)
    skills.upload(USER, SkillUpload(name="pdf-tools", files={"SKILL.md": SKILL_MD}))
    skills.upload(USER, SkillUpload(name="a.md", content="# A\n\nFirst."))
    parsed: list[str] = []
    import yaml

    real = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: parsed.append(text) or real(text))
    first = SkillsService(store).list(USER)  # another process: it folds the uploads' entries
    assert [i.description for i in first.items] == ["A: First.", "Fill PDF forms. Use for PDFs."]
    document = CatalogDocument.model_validate_json(store.get(layout.skill_catalog_key(USER)).body)
    assert set(document.entries) == {"a.md", "pdf-tools"}
    assert skills.list(USER) == first == SkillsService(store).list(USER)
    assert parsed == []  # described at upload: no list parses a frontmatter again


def test_a_folder_uploaded_again_is_never_listed_with_its_old_description(store: LocalDirectoryStore) -> None:
    uploader, lister = SkillsService(store), SkillsService(store)  # two processes
    uploader.upload(USER, SkillUpload(name="pdf-tools", files={"SKILL.md": SKILL_MD}))
    assert lister.list(USER).items[0].description.startswith("Fill")
    uploader.upload(USER, SkillUpload(name="pdf-tools", files={"SKILL.md": SKILL_MD.replace("Fill", "Merge")}))
    assert lister.list(USER).items[0].description.startswith("Merge")
    assert SkillsService(store).list(USER).items[0].description.startswith("Merge")


def test_pages_hold_whole_skills_and_follow_on_without_gaps(store: LocalDirectoryStore) -> None:
    skills = SkillsService(store)
    names = []
    for i in range(7):
        if i % 2:
            skills.upload(USER, SkillUpload(name=f"f{i}", files={
                "SKILL.md": SKILL_MD.replace("pdf-tools", f"f{i}"), **{f"x{n}.txt": "x" for n in range(30)}}))
            names.append(f"f{i}")
        else:
            skills.upload(USER, SkillUpload(name=f"f{i}.md", content=f"# {i}"))
            names.append(f"f{i}.md")
    seen, cursor, pages = [], None, 0
    while True:
        page = SkillsService(store).list(USER, limit=2, cursor=cursor)
        assert page.count <= 2 and all(i.error is None for i in page.items)
        seen += page.skills
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(names) and pages <= 5


def test_an_entry_is_never_trusted_over_the_listing(store: LocalDirectoryStore) -> None:
    skills = SkillsService(store)
    skills.upload(USER, SkillUpload(name="a.md", content="# Old\n\nOld text."))
    skills.list(USER)
    store.put(PREFIX + "a.md", b"# New\n\nWritten behind the API.")  # its entry is now stale
    store.put(PREFIX + "deep.md", DEEP.encode())  # never uploaded: no entry at all
    items = {i.name: i for i in skills.list(USER).items}
    assert items["a.md"].description == "New: Written behind the API."
    assert items["deep.md"].error is not None and items["a.md"].error is None
    document = CatalogDocument.model_validate_json(store.get(layout.skill_catalog_key(USER)).body)
    assert document.entries["a.md"].description.startswith("New")  # folded: the next list reads it


def test_a_damaged_catalog_is_rebuilt_not_trusted(store: LocalDirectoryStore) -> None:
    skills = SkillsService(store)
    skills.upload(USER, SkillUpload(name="a.md", content="# A\n\nText."))
    store.put(layout.skill_catalog_key(USER), b"\x00 not json")
    assert SkillsService(store).list(USER).items[0].description == "A: Text."
    assert CatalogDocument.model_validate_json(store.get(layout.skill_catalog_key(USER)).body).entries["a.md"]


def test_todays_layout_without_a_catalog_is_listed_and_migrated(store: LocalDirectoryStore) -> None:
    # Skills as today's code stored them: the files (and a bundle), no catalog and no entries.
    store.put(PREFIX + "a.md", b"# A\n\nText.")
    store.put(PREFIX + "pdf-tools/SKILL.md", SKILL_MD.encode())
    skills = SkillsService(store)
    assert [i.name for i in skills.list(USER).items] == ["a.md", "pdf-tools"]
    assert set(SkillCatalog(store).load(USER).document.entries) == {"a.md", "pdf-tools"}


class RefusingStore(LocalDirectoryStore):
    """Refuses writes of one key, as a storage outage or a full disk would."""

    refuse: str = ""

    def put(self, key: str, body: bytes, **kwargs: Any) -> Any:  # type: ignore[override]
        if key == self.refuse:
            raise StorageUnavailable(f"refused {key}")
        return super().put(key, body, **kwargs)


def test_a_folder_whose_write_is_refused_is_put_back_as_it_was(tmp_path: Path) -> None:
    store = RefusingStore(tmp_path / "data")
    skills = SkillsService(store)
    skills.upload(USER, SkillUpload(name="pdf-tools", files={"SKILL.md": SKILL_MD, "a.txt": "one"}))
    before = {o.key: o.etag for o in iter_all(store, PREFIX)}
    store.refuse = PREFIX + "pdf-tools/b.txt"
    with pytest.raises(StorageUnavailable):
        skills.upload(USER, SkillUpload(name="pdf-tools", files={"SKILL.md": SKILL_MD.replace("Fill", "Merge"), "a.txt": "two", "b.txt": "new"}))
    manifest = layout.skill_manifest_key(USER, "pdf-tools")
    after = {o.key: o.etag for o in iter_all(store, PREFIX)}
    # The same files with the same ETags; the manifest, same files, under a new ETag (a reader
    # that read the folder half-written reads it again).
    assert after.keys() == before.keys() and after[manifest] != before[manifest]
    assert {k: e for k, e in after.items() if k != manifest} == {k: e for k, e in before.items() if k != manifest}
    assert json.loads(store.get(manifest).body)["files"] == {"SKILL.md": before[PREFIX + "pdf-tools/SKILL.md"],
                                                             "a.txt": before[PREFIX + "pdf-tools/a.txt"]}
    detail, _ = skills.get(USER, "pdf-tools")
    assert detail.content == SKILL_MD and detail.files == {"a.txt": "one"}
    store.refuse = manifest  # the last write of all (and the renewal: the manifest stays as it was)
    with pytest.raises(StorageUnavailable):
        skills.upload(USER, SkillUpload(name="pdf-tools", files={"SKILL.md": SKILL_MD.replace("Fill", "Merge"), "c.txt": "new"}))
    assert {o.key: o.etag for o in iter_all(store, PREFIX)} == after


def test_a_new_folder_whose_write_is_refused_leaves_nothing(tmp_path: Path) -> None:
    """The empty manifest a first upload puts up (readers see nothing of a half-written folder)
    goes with the files when the upload fails."""
    store = RefusingStore(tmp_path / "data")
    skills = SkillsService(store)
    store.refuse = PREFIX + "fresh/b.txt"
    with pytest.raises(StorageUnavailable):
        skills.upload(USER, SkillUpload(name="fresh", files={"SKILL.md": SKILL_MD.replace("pdf-tools", "fresh"), "b.txt": "x"}))
    assert list(iter_all(store, PREFIX)) == []
