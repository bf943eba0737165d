"""The object storage interface every backend implements, and its errors.

The vocabulary is S3's (R2 speaks it): keys are `/`-separated strings, every write returns a
quoted ETag, listing is lexicographic with an optional delimiter and an opaque continuation
token, and writes can be conditional (If-Match / If-None-Match: *).
"""

from __future__ import annotations

import builtins
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


class StorageError(Exception):
    """Base class of storage errors."""


class ObjectNotFound(StorageError):
    """The key does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object at key {key!r}")
        self.key = key


class PreconditionFailed(StorageError):
    """A conditional write's If-Match / If-None-Match did not hold; nothing was written."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"precondition failed for {key!r}: {detail}")
        self.key = key
        self.detail = detail


class StorageUnavailable(StorageError):
    """The store cannot be reached or refuses us (network, credentials, missing bucket).

    `hint` says what an operator should check; it never contains secrets.
    """

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class StorageFull(StorageError):
    """The store refused a write for lack of space (or it is read-only): nothing was written,
    and retrying at once will not help."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or HEAD says about an object."""

    key: str
    size: int
    etag: str  # quoted, as S3 sends it: '"9b2cf535f27731c974343645a3985328"'
    last_modified: datetime  # timezone-aware UTC


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes with its info."""

    info: ObjectInfo
    body: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class ListPage:
    """One page of a listing, in key order.

    `prefixes` holds the common prefixes (ending in the delimiter) when a delimiter was given.
    `next_token` is None on the last page.
    """

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket: the only place user data is kept."""

    #: "local" or "s3"; reported by /health.
    backend_name: str

    def get(self, key: str) -> StoredObject:
        """Return the object; raise ObjectNotFound."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Return the object's info without its body; raise ObjectNotFound."""
        ...

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Write the object atomically and return its new info (with the new ETag).

        `if_match`: write only if the current ETag equals it (PreconditionFailed otherwise,
        also when the object does not exist). `if_none_match`: write only if no object exists.
        """
        ...

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error (as in S3)."""
        ...

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = None,
        max_keys: int = 1000,
        continuation_token: str | None = None,
        start_after: str | None = None,
    ) -> ListPage:
        """List keys under `prefix` in lexicographic (UTF-8 byte) order, one page at a time."""
        ...

    def delete_many(self, keys: builtins.list[str]) -> int:  # `list` here is the method above
        """Delete the keys (batched where the backend can); return how many were deleted."""
        ...


def get_many(store: ObjectStore, keys: list[str], *, workers: int = 64) -> dict[str, StoredObject | None]:
    """GET every key in parallel, so N reads cost one round trip of latency, not N.

    A missing key maps to None (it was deleted between a listing and the read).
    """

    def fetch(key: str) -> StoredObject | None:
        try:
            return store.get(key)
        except ObjectNotFound:
            return None

    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        return dict(zip(keys, pool.map(fetch, keys)))
