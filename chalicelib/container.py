"""The composition root: builds adapters and services from Settings, once per configuration.

A Lambda container (or the local gateway) keeps one Container per distinct Settings, so
clients, pools and caches survive across requests while tests that change the environment
get fresh wiring automatically.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from chalicelib.config import Settings
from chalicelib.storage import ObjectStore
from chalicelib.storage.factory import build_store


class Container:
    """Lazily built adapters and services for one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()  # builders may ask for other parts
        self._built: dict[str, Any] = {}

    def _once(self, name: str, build: Any) -> Any:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]

    @property
    def store(self) -> ObjectStore:
        return self._once("store", lambda: build_store(self.settings))


@functools.lru_cache(maxsize=8)
def get_container(settings: Settings) -> Container:
    """The Container for `settings` (cached: Settings is frozen and hashable)."""
    return Container(settings)
