"""Folder skill uploads are whole from the reader's side (issue 11 item 7): concurrent uploads of
one folder never merge, and readers (GET, setup's load) never see half of one."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import boto3
import pytest

from chalicelib.errors import AppError
from chalicelib.services.skill_bundle import SkillBundle
from chalicelib.services.skill_catalog import SkillCatalog
from chalicelib.services.skill_folders import SkillFolders
from chalicelib.services.skill_loading import SkillLoader
from chalicelib.services.skills import SkillsService, SkillUpload
from chalicelib.storage.base import ObjectNotFound
from chalicelib.storage.cache import BodyCache
from chalicelib.storage.listing import iter_all
from chalicelib.storage.s3 import S3Store, build_s3_client
from tests.support.fault_proxy import FaultProxy, FaultRule
from tests.support.s3 import create_bucket, storage_settings

WRITERS = 10


def version(i: int) -> SkillUpload:
    """Upload i: SKILL.md and common.txt stamped with i, plus a file only version i has."""
    skill = f"---\nname: multi\ndescription: Version {i}. Use when testing.\n---\nversion {i}\n"
    return SkillUpload(name="multi", files={"SKILL.md": skill, "common.txt": f"v{i}", f"only-{i}.txt": f"v{i}"})


def assert_whole(files: dict[str, str], content: str) -> int:
    """The files are exactly one version's; returns which."""
    stamp = content.rsplit("version ", 1)[1].strip()
    assert files == {"common.txt": f"v{stamp}", f"only-{stamp}.txt": f"v{stamp}"}, (stamp, files)
    return int(stamp)


@pytest.fixture
def store(moto_endpoint: str) -> Iterator[S3Store]:
    settings = storage_settings(moto_endpoint, f"folders-{uuid.uuid4().hex[:10]}")
    create_bucket(settings)
    yield S3Store(build_s3_client(settings, boto3.session.Session()), settings.bucket)


def run_concurrently(target, count: int) -> list[object]:  # type: ignore[no-untyped-def]
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_ten_concurrent_uploads_of_one_folder_leave_exactly_one_of_them(store: S3Store) -> None:
    service = SkillsService(store)
    results = run_concurrently(lambda i: service.upload("una", version(i)), WRITERS)
    failures = [r for r in results if isinstance(r, Exception)]
    # Each either wrote whole or answered 409 having written nothing.
    assert all(isinstance(f, AppError) and f.code == "skill_upload_in_progress" for f in failures), failures
    assert len(failures) < WRITERS
    detail, _ = service.get("una", "multi")
    winner = assert_whole(detail.files, detail.content)
    stored = sorted(o.key.rsplit("/", 1)[1] for o in iter_all(store, "users/una/skills/multi/"))
    assert stored == sorted([".skill-manifest.json", "SKILL.md", "common.txt", f"only-{winner}.txt"])
    assert not list(iter_all(store, "users/una/cache/skill-uploads/"))  # every lease released


def test_readers_see_the_old_folder_or_the_new_one_never_a_mix(store: S3Store) -> None:
    service = SkillsService(store)
    service.upload("vic", version(0))
    stop = threading.Event()
    seen: list[int] = []
    torn: list[object] = []

    def reader() -> None:
        for _ in range(400):
            if stop.is_set():
                return
            detail, _ = service.get("vic", "multi")
            try:
                seen.append(assert_whole(detail.files, detail.content))
            except AssertionError as exc:
                torn.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for r in readers:
        r.start()
    try:
        for i in range(1, 9):
            service.upload("vic", version(i))
    finally:
        stop.set()
        for r in readers:
            r.join(timeout=60)
    assert torn == [], torn[:2]
    assert len(set(seen)) > 1  # the readers did read while the versions changed


def test_a_reader_that_listed_before_an_upload_finished_reads_it_whole(store: S3Store) -> None:
    """The race the test above finds now and then, made certain: a reader listed the folder
    before upload 2 wrote its new file; by the time it read the bodies and asked whether an
    upload was under way, upload 2 had finished and dropped its lease. Its manifest names a file
    the listing lacks; the reader reads the folder again, instead of serving a mix as if the
    difference had been made behind the API."""
    service = SkillsService(store)
    service.upload("ned", version(1))
    folder = "users/ned/skills/multi/"
    listed = iter_all(store, folder)
    service.upload("ned", version(2))  # whole: files, manifest, old files deleted, lease dropped
    fetched = {k: o for k, o in ((i.key, _get(store, i.key)) for i in listed) if o is not None}
    assert folder + "only-2.txt" not in fetched  # the reader's view is torn: the new file unlisted
    infos, bodies = SkillFolders(store).committed(
        "ned", "multi", [o.info for o in fetched.values()], {k: o.body for k, o in fetched.items()},
        listed_manifest=next(i.etag for i in listed if i.key.endswith(".skill-manifest.json")),
    )
    files = {k[len(folder):]: b.decode() for k, b in bodies.items() if not k.endswith("SKILL.md")}
    assert files == {"common.txt": "v2", "only-2.txt": "v2"}
    assert sorted(i.key[len(folder):] for i in infos) == ["SKILL.md", "common.txt", "only-2.txt"]


def test_setup_sees_whole_folders_when_uploads_finish_between_its_listing_and_its_reads(store: S3Store) -> None:
    """Setup's load (the listing before the uploads, bodies read after them) resolves every
    folder the same way."""
    service = SkillsService(store)
    names = [f"multi-{i}" for i in range(12)]
    for name in names:
        service.upload("oda", SkillUpload(name=name, files={"SKILL.md": f"---\nname: {name}\ndescription: v1\n---\n",
                                                             "a.txt": "v1", "old.txt": "v1"}))
    listing = iter_all(store, "users/oda/skills/")
    for name in names:
        service.upload("oda", SkillUpload(name=name, files={"SKILL.md": f"---\nname: {name}\ndescription: v2\n---\n",
                                                             "a.txt": "v2", "new.txt": "v2"}))
    fetched = {i.key: _get(store, i.key) for i in listing}  # bodies read after the uploads
    loaded = SkillFolders(store).committed_skill_files("oda", listing, {k: o.body for k, o in fetched.items() if o is not None})
    for name in names:
        mine = {k.rsplit("/", 1)[1]: v.decode() for k, v in loaded.items() if k.split("/")[3] == name}
        assert mine.keys() == {"SKILL.md", "a.txt", "new.txt"} and mine["new.txt"] == "v2", (name, mine)


def test_a_first_upload_half_written_is_not_seen(store: S3Store, moto_endpoint: str) -> None:
    """A folder's first upload holds back one file (its PUT hangs 2 s): a reader meanwhile gets
    no such skill, or waits and gets it whole; never SKILL.md and common.txt without the rest."""
    with FaultProxy(moto_endpoint) as proxy:
        proxied = S3Store(build_s3_client(storage_settings(proxy.url, store.bucket), boto3.session.Session()), store.bucket)
        proxy.add(FaultRule("PUT", r"/only-1\.txt$", action="hang", seconds=2.0))
        uploading = threading.Thread(target=SkillsService(proxied).upload, args=("rae", version(1)))
        uploading.start()
        try:
            deadline = time.monotonic() + 5
            while "users/rae/skills/multi/common.txt" not in {o.key for o in iter_all(store, "users/rae/skills/")}:
                assert time.monotonic() < deadline, "the upload never wrote common.txt"
                time.sleep(0.02)
            try:
                detail, _ = SkillsService(store).get("rae", "multi")
                assert assert_whole(detail.files, detail.content) == 1
            except AppError as exc:
                assert exc.code == "skill_not_found", exc
            loaded = SkillFolders(store).committed_skill_files(
                "rae", (listing := iter_all(store, "users/rae/skills/")), {i.key: store.get(i.key).body for i in listing})
            assert {k.rsplit("/", 1)[1] for k in loaded} in (set(), {"SKILL.md", "common.txt", "only-1.txt"}), loaded
        finally:
            uploading.join(timeout=30)
    detail, _ = SkillsService(store).get("rae", "multi")
    assert assert_whole(detail.files, detail.content) == 1


def test_setup_judges_a_folder_by_the_versions_it_read_not_the_ones_listed(store: S3Store) -> None:
    """A warm process holds version 1's SKILL.md and manifest (cached by their listed ETags);
    version 2 is uploaded between setup's listing and its read of common.txt. By the listing,
    the folder looks whole; by what was read it is a mix. Setup reads it again and loads v2."""
    service = SkillsService(store)

    def upload(i: int) -> None:
        skill = f"---\nname: duo\ndescription: Version {i}.\n---\nversion {i}\n"
        service.upload("qin", SkillUpload(name="duo", files={"SKILL.md": skill, "common.txt": f"v{i}"}))

    upload(1)
    listing = iter_all(store, "users/qin/skills/")
    cache = BodyCache()
    for info in listing:
        if not info.key.endswith("common.txt"):
            cache.remember(info.key, info.etag, store.get(info.key).body)
    upload(2)
    loader = SkillLoader(store, cache, SkillCatalog(store))
    files = loader.read("qin", listing, SkillBundle(store).load("qin")).files
    loaded = {k.rsplit("/", 1)[1]: v.decode() for k, v in files.items()}
    assert loaded == {"SKILL.md": "---\nname: duo\ndescription: Version 2.\n---\nversion 2\n", "common.txt": "v2"}


def test_a_folder_changed_behind_the_api_costs_one_look_not_a_read_again(store: S3Store, moto_endpoint: str) -> None:
    """The agent edited a file through the mount: no lease, and the listed manifest is still the
    current one, so the reader serves what it found after one round trip (the lease and the
    manifest's HEAD, at once), without reading the folder again."""
    SkillsService(store).upload("pia", version(1))
    store.put("users/pia/skills/multi/common.txt", b"edited by the agent")
    with FaultProxy(moto_endpoint) as proxy:
        proxied = S3Store(build_s3_client(storage_settings(proxy.url, store.bucket), boto3.session.Session()), store.bucket)
        detail, _ = SkillsService(proxied).get("pia", "multi")
        seen = [(r.method, r.target.split("?")[0].rsplit("/", 1)[-1]) for r in proxy.seen()]
    assert detail.files["common.txt"] == "edited by the agent"
    lists = [r for r in seen if r[0] == "GET" and r[1] in ("", store.bucket)]
    assert len(lists) == 1, seen  # the folder was listed once
    assert ("HEAD", ".skill-manifest.json") in seen and ("GET", "multi.json") in seen, seen


def _get(store: S3Store, key: str):  # type: ignore[no-untyped-def]
    try:
        return store.get(key)
    except ObjectNotFound:
        return None


def test_setup_load_honours_the_manifest(store: S3Store) -> None:
    service = SkillsService(store)
    service.upload("wes", version(1))
    # A writer that died after its manifest and before deleting what it replaced: the leftover
    # is older than the manifest and not in it.
    manifest_key = "users/wes/skills/multi/.skill-manifest.json"
    store.put("users/wes/skills/multi/leftover.txt", b"old")
    time.sleep(1.1)  # S3 dates objects to the second
    store.put(manifest_key, store.get(manifest_key).body)
    time.sleep(1.1)
    # A file the agent (or a tool) wrote behind the API afterwards: newer than the manifest.
    store.put("users/wes/skills/multi/notes.txt", b"mine")
    listing = iter_all(store, "users/wes/skills/")
    bodies = {o.key: store.get(o.key).body for o in listing}
    loaded = SkillFolders(store).committed_skill_files("wes", listing, bodies)
    assert sorted(k.rsplit("/", 1)[1] for k in loaded) == ["SKILL.md", "common.txt", "notes.txt", "only-1.txt"]


def test_a_lost_lease_response_and_a_dead_writers_lease(store: S3Store, moto_endpoint: str) -> None:
    with FaultProxy(moto_endpoint) as proxy:
        proxied = S3Store(build_s3_client(storage_settings(proxy.url, store.bucket), boto3.session.Session()), store.bucket)
        service = SkillsService(proxied)
        # The lease's create-only PUT is applied but its answer lost: the upload still goes on.
        proxy.add(FaultRule("PUT", r"/cache/skill-uploads/multi\.json$", action="drop_after"))
        service.upload("xia", version(1))
        assert proxy.fired("drop_after") == 1
    # A writer that died holding the lease: its lease expires and the next upload takes over.
    store.put("users/xia/cache/skill-uploads/multi.json",
              json.dumps({"upload_id": "dead", "expires_at": "2020-01-01T00:00:00+00:00"}).encode())
    SkillsService(store).upload("xia", version(2))
    detail, _ = SkillsService(store).get("xia", "multi")
    assert assert_whole(detail.files, detail.content) == 2


def test_a_live_lease_makes_a_second_writer_wait_then_409(store: S3Store) -> None:
    service = SkillsService(store)
    service.folders.wait_seconds = 0.5
    held = service.folders.acquire("yan", "multi")
    with pytest.raises(AppError) as raised:
        service.upload("yan", version(1))
    assert raised.value.status == 409 and raised.value.code == "skill_upload_in_progress"
    assert not list(iter_all(store, "users/yan/skills/"))  # the loser wrote nothing
    held.release()
    service.upload("yan", version(1))
