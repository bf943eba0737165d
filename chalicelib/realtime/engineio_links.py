"""Which API Gateway connections speak Engine.IO, and what they presented when they opened.

API Gateway hands `$default` only a connectionId, and a Socket.IO client authenticates in its
CONNECT packet, after `$connect`. So `$connect` records the connection's query and whether its
headers carried the operator key (never the key itself; a query token only as its SHA-256; a
user token only as the user it names, verified at `$connect`),
the CONNECT packet records the namespace, and `$disconnect` removes the record. The scheduled
ping lists these records to reach every Engine.IO client.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from datetime import datetime

from pydantic import ValidationError

from chalicelib.realtime.state import utcnow
from chalicelib.services.models import ApiModel
from chalicelib.storage import ObjectNotFound, ObjectStore
from chalicelib.storage.base import get_many
from chalicelib.storage.listing import iter_all

PREFIX = "engineio/"
_CACHE_SIZE = 1024


class EngineIOLink(ApiModel):
    """One Engine.IO connection."""

    connection_id: str
    sid: str
    domain_name: str
    stage: str
    query: dict[str, str]
    token_sha256: str | None = None
    operator_header: bool = False
    token_user: str | None = None  # the user of a user token in $connect's headers or query
    namespace: str | None = None  # set once a Socket.IO CONNECT is accepted
    opened_at: datetime


def _key(connection_id: str) -> str:
    return PREFIX + base64.urlsafe_b64encode(connection_id.encode()).decode().rstrip("=") + ".json"


def engine_sid(connection_id: str) -> str:
    """The Engine.IO session id the client is told: derived, so no handler needs to store it."""
    return base64.urlsafe_b64encode(hashlib.sha256(connection_id.encode()).digest()[:15]).decode()


class EngineIOLinks:
    """connectionId → EngineIOLink in the object store, with a per-process cache of connected ones
    (a turn runner looks its subscriber up once, not once per event)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._cache: OrderedDict[str, EngineIOLink | None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, connection_id: str, domain_name: str, stage: str, query: dict[str, str],
            operator_header: bool, token_user: str | None = None) -> EngineIOLink:
        """Record a connection at `$connect` (its `token` kept only as a digest, an `access_token`
        not at all: `token_user` is the user it was verified to name)."""
        token = query.get("token")
        link = EngineIOLink(
            connection_id=connection_id, sid=engine_sid(connection_id), domain_name=domain_name, stage=stage,
            query={k: v for k, v in query.items() if k not in ("token", "access_token")},
            token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None,
            operator_header=operator_header, token_user=token_user, opened_at=utcnow(),
        )
        self._put(link)
        return link

    def connected(self, link: EngineIOLink, namespace: str) -> EngineIOLink:
        """The Socket.IO CONNECT to `namespace` was accepted."""
        updated = link.model_copy(update={"namespace": namespace})
        self._put(updated)
        return updated

    def get(self, connection_id: str) -> EngineIOLink | None:
        """The connection's link, or None for a plain-protocol connection."""
        with self._lock:
            if connection_id in self._cache:
                self._cache.move_to_end(connection_id)
                return self._cache[connection_id]
        try:
            link: EngineIOLink | None = EngineIOLink.model_validate_json(self.store.get(_key(connection_id)).body)
        except (ObjectNotFound, ValidationError):
            link = None
        # Links are written at $connect, before any frame: "none" stays none. A link without a
        # namespace is about to change, so only a connected one is kept.
        if link is None or link.namespace is not None:
            self._remember(connection_id, link)
        return link

    def remove(self, connection_id: str) -> None:
        self.store.delete(_key(connection_id))
        with self._lock:
            self._cache.pop(connection_id, None)

    def all(self) -> list[EngineIOLink]:
        """Every recorded link (for the scheduled ping)."""
        found = []
        for stored in get_many(self.store, [info.key for info in iter_all(self.store, PREFIX)]).values():
            try:
                if stored is not None:
                    found.append(EngineIOLink.model_validate_json(stored.body))
            except ValidationError:
                continue
        return found

    def _put(self, link: EngineIOLink) -> None:
        self.store.put(_key(link.connection_id), link.model_dump_json(by_alias=True).encode(),
                       content_type="application/json")
        if link.namespace is not None:
            self._remember(link.connection_id, link)

    def _remember(self, connection_id: str, link: EngineIOLink | None) -> None:
        with self._lock:
            self._cache[connection_id] = link
            self._cache.move_to_end(connection_id)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
