"""Reading a whole prefix (`storage.listing.iter_all`): the pages of a prefix listed before are
read in parallel from where they started, and the result is always what one sequential listing
returns, whatever was added or removed in between. Over the embedded store and moto's server."""

from __future__ import annotations

import builtins
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.storage import ObjectStore
from chalicelib.storage.base import ListPage, ObjectInfo
from chalicelib.storage.listing import OVERLAP, PAGE_KEYS, PageStarts, iter_all
from chalicelib.storage.local import LocalDirectoryStore
from chalicelib.storage.s3 import S3Store, build_s3_client
from tests.support.s3 import create_bucket, storage_settings

PREFIX = "users/u/skills/"


class Recorded:
    """A store that passes every call through and notes each listing page asked for, and how
    many were in flight at once."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.backend_name = inner.backend_name
        self.pages: builtins.list[tuple[str | None, bool]] = []  # (start_after, continued)
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self._barrier: threading.Barrier | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def expect_parallel(self, count: int) -> None:
        """Make the next `count` listings wait for each other: they pass only if issued at once."""
        self._barrier = threading.Barrier(count, timeout=10)

    def list(self, prefix: str, **kwargs: Any) -> ListPage:
        with self._lock:
            self.pages.append((kwargs.get("start_after"), kwargs.get("continuation_token") is not None))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            barrier = self._barrier
        try:
            if barrier is not None:
                barrier.wait()  # raises BrokenBarrierError if the pages came one after another
            return self.inner.list(prefix, **kwargs)
        finally:
            with self._lock:
                self.in_flight -= 1

    def take_pages(self) -> builtins.list[tuple[str | None, bool]]:
        with self._lock:
            pages, self.pages, self._barrier, self.most_in_flight = self.pages, [], None, 0
            return pages


@pytest.fixture(params=["local", "moto_server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalDirectoryStore(tmp_path / "data")
    else:
        settings = storage_settings(request.getfixturevalue("moto_endpoint"), f"listing-{uuid.uuid4().hex[:12]}")
        create_bucket(settings)
        yield S3Store(build_s3_client(settings, boto3.session.Session()), settings.bucket)


def _put(store: ObjectStore, names: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda name: store.put(PREFIX + name, b"x"), names))


def _sequential(store: ObjectStore) -> list[str]:
    """The keys as one page-after-page listing returns them (the reference)."""
    keys: list[str] = []
    token = None
    while True:
        page = store.list(PREFIX, continuation_token=token)
        keys += [info.key for info in page.objects]
        token = page.next_token
        if token is None:
            return keys


def _keys(found: list[ObjectInfo]) -> list[str]:
    return [info.key for info in found]


def test_a_prefix_listed_before_is_read_in_parallel_and_stays_exact(store: ObjectStore) -> None:
    _put(store, [f"skill-{i:04d}.md" for i in range(2100)])
    recorded = Recorded(store)

    first = iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    assert _keys(first) == _sequential(store) and len(first) == 2100
    assert recorded.take_pages() == [(None, False), (None, True), (None, True)]  # nothing known: in sequence

    recorded.expect_parallel(3)
    again = iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    pages = recorded.take_pages()
    assert _keys(again) == _keys(first)
    cut = PAGE_KEYS - OVERLAP
    expected = [(None, False), (PREFIX + f"skill-{cut:04d}.md", False), (PREFIX + f"skill-{2 * cut:04d}.md", False)]
    assert sorted(pages, key=str) == sorted(expected, key=str)  # one request per page, all at once
    assert [info.etag for info in again] == [info.etag for info in first]


def test_keys_added_before_a_cut_cost_a_page_never_a_key(store: ObjectStore) -> None:
    _put(store, [f"skill-{i:04d}.md" for i in range(1200)])
    recorded = Recorded(store)
    iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    recorded.take_pages()

    # 120 keys sorting before the cut (more than the overlap absorbs), and a changed file.
    _put(store, [f"added-{i:03d}.md" for i in range(120)])
    store.put(PREFIX + "skill-0500.md", b"changed")
    found = iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    pages = recorded.take_pages()
    assert _keys(found) == _sequential(store) and len(found) == 1320
    assert sorted(p for p in pages if p[0] is not None) == [(PREFIX + f"skill-{PAGE_KEYS - OVERLAP:04d}.md", False)]
    assert (None, True) in pages  # the first segment took one more page to reach the cut
    assert {i.key: i.etag for i in found}[PREFIX + "skill-0500.md"] == store.head(PREFIX + "skill-0500.md").etag


def test_keys_removed_make_pages_overlap_and_one_page_forgets_the_cuts(store: ObjectStore) -> None:
    _put(store, [f"skill-{i:04d}.md" for i in range(1100)])
    recorded = Recorded(store)
    iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    recorded.take_pages()

    store.delete_many([PREFIX + f"skill-{i:04d}.md" for i in range(0, 1100, 2)])  # half of them
    found = iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    assert _keys(found) == _sequential(store) and len(found) == 550
    assert len(recorded.take_pages()) == 2  # the remembered cut was read once more, in parallel

    again = iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    assert _keys(again) == _keys(found)
    assert recorded.take_pages() == [(None, False)]  # one page now: nothing remembered


def test_an_emptied_prefix_lists_nothing(store: ObjectStore) -> None:
    _put(store, [f"skill-{i:04d}.md" for i in range(1001)])
    recorded = Recorded(store)
    iter_all(recorded, PREFIX)  # type: ignore[arg-type]
    store.delete_many([info.key for info in iter_all(store, PREFIX)])
    assert iter_all(recorded, PREFIX) == []  # type: ignore[arg-type]


def test_page_starts_are_bounded_and_per_prefix() -> None:
    starts = PageStarts(max_remembered=2)
    keys = [f"k{i:05d}" for i in range(3 * PAGE_KEYS)]
    starts.learn("a/", keys)
    assert starts.get("a/") == tuple(keys[i] for i in range(PAGE_KEYS - OVERLAP, len(keys), PAGE_KEYS - OVERLAP))
    starts.learn("b/", keys[:PAGE_KEYS])  # one page: nothing to remember
    assert starts.get("b/") == ()
    starts.learn("b/", keys)
    starts.learn("c/", keys)  # the least recently used, "a/", goes
    assert starts.get("a/") == () and starts.get("b/") and starts.get("c/")
