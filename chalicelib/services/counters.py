"""A small JSON document changed by conditional read-modify-write: the counters quotas and
usage keep in storage, where many Lambdas may count at once.

Each attempt reads the document and its ETag, applies the change, and writes it back only if
nobody wrote in between (If-Match; If-None-Match: * for the first). A lost race is retried
after a short, jittered pause, so no increment is lost and none is counted twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from chalicelib.errors import Conflict
from chalicelib.storage import ObjectNotFound, ObjectStore, PreconditionFailed

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_ATTEMPTS = 64
BACKOFF_SECONDS = (0.002, 0.02)  # uniform jitter between these after each lost race


def read_document(store: ObjectStore, key: str, model: type[M]) -> tuple[M, str] | None:
    """The document and its ETag; None when absent. An unreadable one reads as empty (its next
    write replaces it) rather than wedging the counter."""
    try:
        stored = store.get(key)
    except ObjectNotFound:
        return None
    try:
        return model.model_validate_json(stored.body), stored.info.etag
    except ValidationError:
        return model(), stored.info.etag


def update_document(store: ObjectStore, key: str, model: type[M], mutate: Callable[[M], T]) -> T:
    """Apply `mutate` to a fresh copy of the document and write it back conditionally.

    `mutate` may run once per attempt, so it must change only the document it is given; an
    exception it raises ends the update with nothing written.
    """
    for _ in range(MAX_ATTEMPTS):
        found = read_document(store, key, model)
        doc, etag = found if found is not None else (model(), None)
        result = mutate(doc)
        try:
            store.put(key, doc.model_dump_json(by_alias=True).encode(), content_type="application/json",
                      if_match=etag, if_none_match=etag is None)
        except PreconditionFailed:
            time.sleep(random.uniform(*BACKOFF_SECONDS))
            continue
        return result
    raise Conflict(f"{key} is changing too fast to update: retry.", code="counter_contention")
