"""Which session a websocket connection belongs to.

API Gateway gives `$default` messages only a connectionId (no query string), so `$connect`
records the mapping at `connections/{connectionId}.json`, and `$disconnect` removes it.
"""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import ValidationError

from chalicelib.realtime.state import utcnow
from chalicelib.services.models import ApiModel
from chalicelib.storage import ObjectNotFound, ObjectStore

PREFIX = "connections/"


class Connection(ApiModel):
    connection_id: str
    session_id: str
    user_id: str
    domain_name: str
    stage: str
    connected_at: datetime
    socketio: bool = False  # a Socket.IO client (its Engine.IO record goes when it does)


def _key(connection_id: str) -> str:
    # Connection ids contain '=' and '/'-unsafe characters; encode them into one safe segment.
    return PREFIX + base64.urlsafe_b64encode(connection_id.encode()).decode().rstrip("=") + ".json"


class ConnectionRegistry:
    """connectionId → session, in the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def add(self, connection_id: str, session_id: str, user_id: str, domain_name: str, stage: str,
            socketio: bool = False) -> Connection:
        conn = Connection(
            connection_id=connection_id,
            session_id=session_id,
            user_id=user_id,
            domain_name=domain_name,
            stage=stage,
            connected_at=utcnow(),
            socketio=socketio,
        )
        self.store.put(_key(connection_id), conn.model_dump_json(by_alias=True).encode(), content_type="application/json")
        return conn

    def get(self, connection_id: str) -> Connection | None:
        try:
            return Connection.model_validate_json(self.store.get(_key(connection_id)).body)
        except (ObjectNotFound, ValidationError):
            return None

    def remove(self, connection_id: str) -> None:
        self.store.delete(_key(connection_id))
