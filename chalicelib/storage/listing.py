"""Reading every key under a prefix, with the pages read in parallel once their starts are known.

A listing page holds at most 1,000 keys, and each page's continuation token comes from the page
before it, so a prefix of n keys used to cost ceil(n / 1000) round trips one after the other: at
1,003 skills, setup waited for a second listing that returned three keys. The key each page
starts after is known from the previous listing of the same prefix, so a process that listed it
before asks for every page at once (StartAfter) and stitches them together.

The starts are a hint, never trusted for content. The key space is cut at the remembered keys
into segments, and each segment is read until a page reaches the next cut (or the listing ends):
keys added since only make a segment take one more page, keys removed only make pages overlap,
and the result is exactly what one sequential listing would return. Each cut sits 50 keys before
the previous listing's page boundary, so up to 50 keys added before it still fit in one page.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from chalicelib.storage.base import ListPage, ObjectInfo, ObjectStore

#: The most keys a listing page holds (S3's and R2's limit; the local store's page too).
PAGE_KEYS = 1000
#: How far before a page boundary the next page's start is placed (see the module docstring).
OVERLAP = 50
#: Prefixes whose page starts a process keeps, per store (a few hundred bytes each).
MAX_REMEMBERED = 4096
#: Pages read at once; a longer listing reads its remaining segments in turn.
MAX_PARALLEL = 8


class PageStarts:
    """The keys a prefix's listing pages started after, as the last full listing found them."""

    def __init__(self, max_remembered: int = MAX_REMEMBERED) -> None:
        self.max_remembered = max_remembered
        self._starts: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prefix: str) -> tuple[str, ...]:
        """The cuts to read `prefix` from in parallel (empty: read it in one sequence)."""
        with self._lock:
            starts = self._starts.get(prefix, ())
            if starts:
                self._starts.move_to_end(prefix)
            return starts

    def learn(self, prefix: str, keys: Sequence[str]) -> None:
        """Remember where the pages of a listing of `keys` (sorted) would start; a listing that
        fits in one page needs no cut, and forgets any it had."""
        starts = tuple(keys[i] for i in range(PAGE_KEYS - OVERLAP, len(keys), PAGE_KEYS - OVERLAP)) \
            if len(keys) > PAGE_KEYS else ()
        with self._lock:
            if not starts:
                self._starts.pop(prefix, None)
                return
            self._starts[prefix] = starts
            self._starts.move_to_end(prefix)
            while len(self._starts) > self.max_remembered:
                self._starts.popitem(last=False)


_remembered: weakref.WeakKeyDictionary[object, PageStarts] = weakref.WeakKeyDictionary()
_remembered_lock = threading.Lock()


def page_starts(store: ObjectStore) -> PageStarts | None:
    """This process's page starts for `store` (None for a store that cannot be weakly referenced)."""
    with _remembered_lock:
        try:
            found = _remembered.get(store)
            if found is None:
                found = _remembered[store] = PageStarts()
        except TypeError:
            return None
        return found


def iter_all(store: ObjectStore, prefix: str) -> list[ObjectInfo]:
    """Every object under `prefix`, in key order, following every page to the end.

    A prefix this process listed before, over more than one page, is read from its remembered
    page starts in parallel (see the module docstring); any other is read page after page.
    """
    memory = page_starts(store)
    cuts = memory.get(prefix) if memory is not None else ()
    found = _read_segments(store, prefix, cuts) if cuts else _read_segment(store, prefix, None, None)
    if memory is not None:
        memory.learn(prefix, [info.key for info in found])
    return found


def _read_segments(store: ObjectStore, prefix: str, cuts: Sequence[str]) -> list[ObjectInfo]:
    """Read the segments (-inf, cut1], (cut1, cut2], ..., (cutN, +inf) in parallel; stitch them."""
    bounds: list[tuple[str | None, str | None]] = list(zip([None, *cuts], [*cuts, None]))
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(bounds))) as pool:
        segments = list(pool.map(lambda b: _read_segment(store, prefix, b[0], b[1]), bounds))
    return [info for segment in segments for info in segment]


def _read_segment(store: ObjectStore, prefix: str, after: str | None, upto: str | None) -> list[ObjectInfo]:
    """The objects with `after` < key <= `upto` (None: unbounded), page after page until a page
    passes `upto` or the listing ends."""
    found: list[ObjectInfo] = []
    page: ListPage = store.list(prefix, start_after=after) if after is not None else store.list(prefix)
    while True:
        found.extend(info for info in page.objects if upto is None or info.key <= upto)
        passed = upto is not None and bool(page.objects) and page.objects[-1].key >= upto
        if page.next_token is None or passed:
            return found
        page = store.list(prefix, continuation_token=page.next_token)
