"""An in-process cache of object bodies, keyed by (key, ETag).

A listing already carries every object's ETag, so a body fetched once can be reused for as
long as its ETag is unchanged, with no risk of serving stale content. A warm Lambda container
(or the local gateway) then sets a session up with one listing instead of one GET per file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from chalicelib.storage.base import ObjectInfo, ObjectStore, get_many


class BodyCache:
    """LRU of object bodies, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, store: ObjectStore, infos: list[ObjectInfo]) -> dict[str, bytes]:
        """Bodies of the listed objects: cached ones free, the rest fetched in parallel."""
        return {key: body for key, (body, _) in self.read_many(store, infos).items()}

    def read_many(self, store: ObjectStore, infos: list[ObjectInfo]) -> dict[str, tuple[bytes, str]]:
        """Like `get_many`, with the ETag of each body: the listed one, unless the object was
        rewritten between the listing and its read (then the body is the newer one's)."""
        found: dict[str, tuple[bytes, str]] = {}
        missing: list[ObjectInfo] = []
        with self._lock:
            for info in infos:
                body = self._items.get((info.key, info.etag))
                if body is None:
                    missing.append(info)
                else:
                    self._items.move_to_end((info.key, info.etag))
                    found[info.key] = (body, info.etag)
            self.hits += len(found)
            self.misses += len(missing)
        fetched = get_many(store, [i.key for i in missing])
        for key, obj in fetched.items():
            if obj is None:
                continue  # deleted since the listing
            found[key] = (obj.body, obj.info.etag)
            self._put(key, obj.info.etag, obj.body)
        return found

    def remember(self, key: str, etag: str, body: bytes) -> None:
        """Keep a body this process has just written, under the ETag storage gave it."""
        self._put(key, etag, body)

    def _put(self, key: str, etag: str, body: bytes) -> None:
        if len(body) > self.max_bytes // 16:
            return  # a few huge objects must not evict everything else
        with self._lock:
            if (key, etag) in self._items:
                return
            self._items[(key, etag)] = body
            self._size += len(body)
            while self._size > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)
