"""One contract, every backend: the local directory, moto in-process, moto server over HTTP."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from chalicelib.storage import ObjectNotFound, ObjectStore, PreconditionFailed
from chalicelib.storage.base import get_many
from chalicelib.storage.listing import iter_all
from chalicelib.storage.local import LocalDirectoryStore
from chalicelib.storage.s3 import S3Store, build_s3_client
from tests.support.s3 import create_bucket, storage_settings


@pytest.fixture(params=["local", "moto", "moto_server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalDirectoryStore(tmp_path / "data")
    elif request.param == "moto":
        with mock_aws():
            settings = storage_settings(None, "contract", region="us-east-1")
            create_bucket(settings)
            yield S3Store(build_s3_client(settings, boto3.session.Session()), settings.bucket)
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        settings = storage_settings(endpoint, f"contract-{uuid.uuid4().hex[:12]}")
        create_bucket(settings)
        yield S3Store(build_s3_client(settings, boto3.session.Session()), settings.bucket)


def test_put_get_head_roundtrip(store: ObjectStore) -> None:
    info = store.put("users/a/skills/x.md", b"# X\n", content_type="text/markdown")
    assert info.etag.startswith('"') and info.etag.endswith('"')
    got = store.get("users/a/skills/x.md")
    assert got.body == b"# X\n"
    assert got.info.etag == info.etag
    head = store.head("users/a/skills/x.md")
    assert (head.size, head.etag) == (4, info.etag)
    assert head.last_modified.tzinfo is not None


def test_etag_changes_with_content_and_is_stable(store: ObjectStore) -> None:
    first = store.put("k/one", b"a")
    again = store.put("k/one", b"a")
    other = store.put("k/one", b"b")
    assert first.etag == again.etag
    assert other.etag != first.etag
    assert store.head("k/one").etag == other.etag


def test_missing_key_raises(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope/missing")
    with pytest.raises(ObjectNotFound):
        store.head("nope/missing")
    store.delete("nope/missing")  # deleting a missing key is fine, as in S3


def test_delete_removes(store: ObjectStore) -> None:
    store.put("d/x", b"1")
    store.delete("d/x")
    with pytest.raises(ObjectNotFound):
        store.get("d/x")
    assert store.list("d/").objects == []


def test_if_none_match_creates_only(store: ObjectStore) -> None:
    store.put("c/new", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("c/new", b"2", if_none_match=True)
    assert store.get("c/new").body == b"1"


def test_if_match_compares_etag(store: ObjectStore) -> None:
    info = store.put("c/m", b"1")
    updated = store.put("c/m", b"2", if_match=info.etag)
    with pytest.raises(PreconditionFailed):
        store.put("c/m", b"3", if_match=info.etag)
    assert store.get("c/m").body == b"2"
    assert store.head("c/m").etag == updated.etag


def test_if_match_on_missing_object_fails(store: ObjectStore) -> None:
    with pytest.raises((PreconditionFailed, ObjectNotFound)):
        store.put("c/absent", b"1", if_match='"0123456789abcdef0123456789abcdef"')
    with pytest.raises(ObjectNotFound):
        store.get("c/absent")


def test_list_prefix_order_and_pagination(store: ObjectStore) -> None:
    keys = [f"p/{i:03d}" for i in range(7)] + ["q/outside"]
    for key in reversed(keys):
        store.put(key, key.encode())
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = store.list("p/", max_keys=3, continuation_token=token)
        pages += 1
        assert len(page.objects) <= 3
        seen += [o.key for o in page.objects]
        token = page.next_token
        if token is None:
            break
        assert pages < 10
    assert seen == keys[:7]
    assert pages == 3
    assert [o.key for o in iter_all(store, "p/")] == keys[:7]


def test_list_is_utf8_byte_ordered(store: ObjectStore) -> None:
    for key in ["o/Z", "o/a", "o/é", "o/_", "o/0"]:
        store.put(key, b"x")
    listed = [o.key for o in store.list("o/").objects]
    assert listed == sorted(listed, key=lambda k: k.encode())


def test_list_with_delimiter_groups_folders(store: ObjectStore) -> None:
    for key in ["s/a.md", "s/b/SKILL.md", "s/b/ref.txt", "s/c.md", "s/d/SKILL.md"]:
        store.put(key, b"x")
    page = store.list("s/", delimiter="/")
    assert [o.key for o in page.objects] == ["s/a.md", "s/c.md"]
    assert page.prefixes == ["s/b/", "s/d/"]
    # Pagination counts a folder once, and resumes after it.
    first = store.list("s/", delimiter="/", max_keys=2)
    assert [o.key for o in first.objects] == ["s/a.md"] and first.prefixes == ["s/b/"]
    second = store.list("s/", delimiter="/", max_keys=2, continuation_token=first.next_token)
    assert [o.key for o in second.objects] == ["s/c.md"] and second.prefixes == ["s/d/"]
    assert second.next_token is None


def test_list_partial_prefix(store: ObjectStore) -> None:
    for key in ["u/alice/x", "u/alicia/y", "u/bob/z"]:
        store.put(key, b"x")
    assert [o.key for o in store.list("u/ali").objects] == ["u/alice/x", "u/alicia/y"]
    assert store.list("u/nobody/").objects == []


def test_delete_many(store: ObjectStore) -> None:
    keys = [f"m/{i}" for i in range(5)]
    for key in keys:
        store.put(key, b"x")
    assert store.delete_many(keys[:3]) == 3
    assert [o.key for o in store.list("m/").objects] == keys[3:]


def test_get_many_in_parallel(store: ObjectStore) -> None:
    for i in range(20):
        store.put(f"g/{i}", str(i).encode())
    found = get_many(store, [f"g/{i}" for i in range(20)] + ["g/missing"])
    assert found["g/missing"] is None
    assert all(found[f"g/{i}"].body == str(i).encode() for i in range(20))  # type: ignore[union-attr]


def test_concurrent_conditional_creates_have_one_winner(store: ObjectStore) -> None:
    winners: list[int] = []
    losers: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(n: int) -> None:
        barrier.wait(timeout=10)
        try:
            store.put("race/one", str(n).encode(), if_none_match=True)
            winners.append(n)
        except PreconditionFailed:
            losers.append(n)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(winners) == 1 and len(losers) == 7
    assert store.get("race/one").body == str(winners[0]).encode()


def test_concurrent_if_match_updates_lose_nothing(store: ObjectStore) -> None:
    """Optimistic increments from 4 threads: every increment lands exactly once."""
    store.put("race/counter", b"0")

    def increment(times: int) -> None:
        done = 0
        for _ in range(200):  # bounded retries
            if done == times:
                return
            current = store.get("race/counter")
            try:
                store.put("race/counter", str(int(current.body) + 1).encode(), if_match=current.info.etag)
                done += 1
            except PreconditionFailed:
                continue

    threads = [threading.Thread(target=increment, args=(5,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert store.get("race/counter").body == b"20"


def _increment_in_process(data_dir: str, times: int) -> None:
    store = LocalDirectoryStore(data_dir)
    done = 0
    for _ in range(500):
        if done == times:
            return
        current = store.get("race/counter")
        try:
            store.put("race/counter", str(int(current.body) + 1).encode(), if_match=current.info.etag)
            done += 1
        except PreconditionFailed:
            continue


def test_local_store_is_safe_across_processes(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    store.put("race/counter", b"0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment_in_process, args=(str(tmp_path), 10)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert store.get("race/counter").body == b"30"


def test_local_store_persists_across_instances(tmp_path: Path) -> None:
    LocalDirectoryStore(tmp_path).put("users/a/settings/preferences.json", b"{}")
    again = LocalDirectoryStore(tmp_path)
    assert again.get("users/a/settings/preferences.json").body == b"{}"
    # Objects are plain files at their keys: the user's tree can be bind-mounted.
    assert (tmp_path / "users/a/settings/preferences.json").read_bytes() == b"{}"


def test_local_store_leaves_no_temp_files_and_prunes_folders(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    store.put("users/a/skills/deep/SKILL.md", b"x")
    store.delete("users/a/skills/deep/SKILL.md")
    assert not (tmp_path / "users").exists()
    assert list((tmp_path / ".internal" / "tmp").iterdir()) == []


def test_local_store_etag_notices_outside_edits(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    info = store.put("users/a/skills/x.md", b"one")
    (tmp_path / "users/a/skills/x.md").write_bytes(b"changed by a sandbox")
    assert store.head("users/a/skills/x.md").etag != info.etag
    with pytest.raises(PreconditionFailed):
        store.put("users/a/skills/x.md", b"two", if_match=info.etag)


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "a//b", ".internal/tmp/x", "a/./b", ""])
def test_local_store_refuses_keys_that_leave_the_root(tmp_path: Path, key: str) -> None:
    from chalicelib.storage import StorageError

    store = LocalDirectoryStore(tmp_path / "root")
    with pytest.raises(StorageError):
        store.put(key, b"x")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "b").exists()
