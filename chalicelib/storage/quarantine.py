"""Objects that do not parse are set aside, never silently replaced or retried forever.

A copy goes to `corrupt/{key}.{UTC time}` (kept for inspection: what wrote it, what it held),
and the caller rebuilds the object from what is known. Nothing reads under `corrupt/`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from chalicelib.storage.base import ObjectStore

log = logging.getLogger(__name__)

CORRUPT_PREFIX = "corrupt/"


def set_aside(store: ObjectStore, key: str, body: bytes, why: str) -> str:
    """Copy an unreadable object under `corrupt/` with the time; return the copy's key."""
    aside = f"{CORRUPT_PREFIX}{key}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}"
    store.put(aside, body, content_type="application/octet-stream")
    log.warning("%s is unreadable (%s): set aside as %s and rebuilt", key, why, aside)
    return aside
