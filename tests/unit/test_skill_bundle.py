"""The skills bundle: a cache that may be behind, damaged or missing, and never serves wrong content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.services.skill_bundle import BundleDocument, BundleFile, SkillBundle
from chalicelib.storage import layout
from chalicelib.storage.base import ObjectInfo, ObjectStore
from chalicelib.storage.listing import iter_all
from chalicelib.storage.local import LocalDirectoryStore

USER = "alice"
PREFIX = layout.skills_prefix(USER)
BUNDLE_KEY = layout.skills_bundle_key(USER)


@pytest.fixture
def store(tmp_path: Path) -> LocalDirectoryStore:
    return LocalDirectoryStore(tmp_path / "data")


def put_skill(store: ObjectStore, bundle: SkillBundle, path: str, body: bytes) -> ObjectInfo:
    """Write a file, then bring the bundle up to date as the next setup does (uploads leave it alone)."""
    info = store.put(PREFIX + path, body)
    files = listing(store)
    assert bundle.repair(USER, files, {i.key: store.get(i.key).body for i in files}, bundle.load(USER))
    return info


def listing(store: ObjectStore) -> list[ObjectInfo]:
    return list(iter_all(store, PREFIX))


def stored_document(store: ObjectStore) -> BundleDocument:
    return BundleDocument.model_validate_json(store.get(BUNDLE_KEY).body)


def test_the_bundle_sits_under_the_user_and_outside_skills() -> None:
    assert BUNDLE_KEY == "users/alice/cache/skills-bundle.json"
    assert not BUNDLE_KEY.startswith(PREFIX)


def test_text_and_binary_files_round_trip() -> None:
    text = BundleFile.of('"e"', "é # skill".encode())
    binary = BundleFile.of('"e"', b"\xff\x00\xfe")
    assert text.text == "é # skill" and text.base64 is None
    assert binary.text is None and binary.base64 is not None
    assert text.body() == "é # skill".encode() and binary.body() == b"\xff\x00\xfe"
    assert BundleFile.model_validate_json(binary.model_dump_json()).body() == b"\xff\x00\xfe"


def test_files_the_bundle_holds_are_served_without_reads(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    put_skill(store, bundle, "a.md", b"# A")
    put_skill(store, bundle, "pdf/SKILL.md", b"---\nname: pdf\n---\n")
    match = bundle.match(USER, listing(store), bundle.load(USER))
    assert match.bodies == {PREFIX + "a.md": b"# A", PREFIX + "pdf/SKILL.md": b"---\nname: pdf\n---\n"}
    assert match.missing == [] and not match.stale


def test_a_file_changed_behind_the_api_is_read_never_served_stale(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    put_skill(store, bundle, "a.md", b"old")
    store.put(PREFIX + "a.md", b"new")  # straight to the bucket
    match = bundle.match(USER, listing(store), bundle.load(USER))
    assert match.bodies == {} and [i.key for i in match.missing] == [PREFIX + "a.md"] and match.stale


def test_a_new_file_behind_the_api_makes_it_stale_and_repair_catches_up(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    put_skill(store, bundle, "a.md", b"A")
    store.put(PREFIX + "b.md", b"B")
    files = listing(store)
    loaded = bundle.load(USER)
    match = bundle.match(USER, files, loaded)
    assert [i.key for i in match.missing] == [PREFIX + "b.md"] and match.stale
    bodies = {**match.bodies, PREFIX + "b.md": store.get(PREFIX + "b.md").body}
    assert bundle.repair(USER, files, bodies, loaded)
    again = bundle.match(USER, listing(store), bundle.load(USER))
    assert again.missing == [] and not again.stale and len(again.bodies) == 2


def test_a_deleted_file_makes_it_stale_and_repair_drops_it(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    put_skill(store, bundle, "a.md", b"A")
    put_skill(store, bundle, "b.md", b"B")
    store.delete(PREFIX + "b.md")
    files, loaded = listing(store), bundle.load(USER)
    match = bundle.match(USER, files, loaded)
    assert match.stale and match.missing == []
    assert bundle.repair(USER, files, match.bodies, loaded)
    assert set(stored_document(store).files) == {"a.md"}


def test_large_files_stay_out_and_do_not_make_it_stale(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store, max_file_bytes=10)
    put_skill(store, bundle, "small.md", b"small")
    put_skill(store, bundle, "large.md", b"x" * 11)
    assert set(stored_document(store).files) == {"small.md"}
    match = bundle.match(USER, listing(store), bundle.load(USER))
    assert [i.key for i in match.missing] == [PREFIX + "large.md"] and not match.stale


def test_the_total_cap_is_stable_so_setup_does_not_rewrite_it_every_time(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store, max_file_bytes=100, max_total_bytes=25)
    for name, size in (("a.md", 10), ("b.md", 20), ("c.md", 5), ("d.md", 30)):
        store.put(PREFIX + name, b"x" * size)
    files, loaded = listing(store), bundle.load(USER)
    match = bundle.match(USER, files, loaded)
    assert match.stale
    assert bundle.repair(USER, files, {i.key: store.get(i.key).body for i in files}, loaded)
    assert set(stored_document(store).files) == {"a.md", "c.md"}  # key order, while it fits
    again = bundle.match(USER, listing(store), bundle.load(USER))
    assert not again.stale and sorted(i.key for i in again.missing) == [PREFIX + "b.md", PREFIX + "d.md"]


def test_a_damaged_bundle_is_ignored_then_replaced(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    store.put(PREFIX + "a.md", b"A")
    store.put(BUNDLE_KEY, b"{not json")
    loaded = bundle.load(USER)
    assert loaded.document.files == {} and loaded.etag is not None
    files = listing(store)
    match = bundle.match(USER, files, loaded)
    assert match.stale and [i.key for i in match.missing] == [PREFIX + "a.md"]
    assert bundle.repair(USER, files, {PREFIX + "a.md": b"A"}, loaded)
    assert stored_document(store).files["a.md"].body() == b"A"


def test_a_damaged_entry_is_read_from_storage(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    info = store.put(PREFIX + "a.md", b"A")
    document = {"version": 1, "files": {"a.md": {"etag": info.etag, "size": 1, "base64": "!!not base64!!"}}}
    store.put(BUNDLE_KEY, json.dumps(document).encode())
    match = bundle.match(USER, listing(store), bundle.load(USER))
    assert match.bodies == {} and [i.key for i in match.missing] == [PREFIX + "a.md"] and match.stale


def test_repair_loses_to_a_concurrent_writer_and_keeps_its_bundle(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    put_skill(store, bundle, "a.md", b"A")
    store.put(PREFIX + "b.md", b"B")
    files, loaded = listing(store), bundle.load(USER)  # setup reads...
    put_skill(store, bundle, "c.md", b"C")  # ...another setup repairs first...
    assert not bundle.repair(USER, files, {PREFIX + "a.md": b"A", PREFIX + "b.md": b"B"}, loaded)  # ...412
    assert set(stored_document(store).files) == {"a.md", "b.md", "c.md"}  # the other setup's, kept


def test_removing_the_last_file_removes_the_bundle(store: LocalDirectoryStore) -> None:
    bundle = SkillBundle(store)
    put_skill(store, bundle, "a.md", b"A")
    store.delete(PREFIX + "a.md")
    assert bundle.repair(USER, [], {}, bundle.load(USER))
    assert list(iter_all(store, layout.user_prefix(USER))) == []
