"""Object storage adapters: one small interface, an embedded directory and the S3 API."""

from chalicelib.storage.base import (
    ListPage,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StorageError,
    StorageFull,
    StorageUnavailable,
    StoredObject,
)

__all__ = [
    "ListPage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "StoredObject",
]
