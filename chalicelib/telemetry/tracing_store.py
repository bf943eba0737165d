"""A span for each operation of the embedded store (`./scripts/dev`), as the S3 adapter's
botocore hooks give one for each S3 call. Wrapped only when tracing is on."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from chalicelib.storage.base import ObjectStore
from chalicelib.telemetry import tracing

#: The ObjectStore operations that reach the disk; anything else passes through unwrapped.
OPERATIONS = frozenset({"get", "head", "list", "put", "delete", "delete_many"})


class _TracedStore:
    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name not in OPERATIONS or not callable(found):
            return found
        return _traced(name, found)


def _traced(name: str, operation: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(operation)
    def call(*args: Any, **kwargs: Any) -> Any:
        key = args[0] if args and isinstance(args[0], str) else kwargs.get("key") or kwargs.get("prefix")
        with tracing.span(f"local {name}", {"storage.operation": name, "storage.key": key}, kind="client"):
            return operation(*args, **kwargs)

    return call


def traced(store: ObjectStore) -> ObjectStore:
    """`store`, each operation in a span when tracing is on (unchanged when it is off)."""
    return cast(ObjectStore, _TracedStore(store)) if tracing.enabled() else store
