"""The ids the current work is about, for every log line written meanwhile.

Held in context variables, so each thread (a turn's watcher, the runner) and each request sees
its own. `bound(...)` adds ids for the duration of a block and restores the previous ones after,
so a turn inside an invocation inside a request each add what they know.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

FIELDS = ("requestId", "sessionId", "turnId", "userId")

_ids: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_ids", default={})


def current() -> dict[str, str]:
    """The ids bound now (a copy)."""
    return dict(_ids.get())


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Bind ids (`requestId`, `sessionId`, `turnId`, `userId`) for the block; None leaves one as it was."""
    unknown = set(ids) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log ids: {sorted(unknown)}")
    token = _ids.set({**_ids.get(), **{k: str(v) for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _ids.reset(token)
