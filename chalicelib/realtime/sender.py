"""Sending frames to websocket clients through API Gateway's management API.

The adapter wraps Chalice's `app.websocket_api` (post_to_connection under the hood), which is
the real production path; the local gateway implements the same management API.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from chalice.app import WebsocketDisconnectedError

from chalicelib.realtime.protocol import split_frame

log = logging.getLogger(__name__)


class Sender(Protocol):
    """Delivers frames to connections."""

    def send(self, connection_id: str, payload: dict[str, Any]) -> bool:
        """Send one frame; False when the connection is gone (the client went away)."""
        ...

    def configure(self, domain_name: str, stage: str) -> None:
        """Point the sender at the API a connection belongs to (needed outside ws handlers)."""
        ...


class ChaliceSender:
    """A Sender over Chalice's WebsocketAPI (`app.websocket_api`)."""

    def __init__(self, websocket_api: Any) -> None:
        self.websocket_api = websocket_api
        self._lock = threading.Lock()

    def configure(self, domain_name: str, stage: str) -> None:
        # Chalice only honours the first configure() per process, which is what we want:
        # one Lambda container serves one API stage.
        with self._lock:
            self.websocket_api.configure(domain_name, stage)

    def send(self, connection_id: str, payload: dict[str, Any]) -> bool:
        """Send the frame, in parts when it passes API Gateway's frame limit (see split_frame)."""
        try:
            for text in split_frame(payload):
                self.websocket_api.send(connection_id, text)
            return True
        except WebsocketDisconnectedError:
            return False

    def send_text(self, connection_id: str, text: str) -> bool:
        """Send one websocket message as is (an Engine.IO packet); False when the connection is gone."""
        try:
            self.websocket_api.send(connection_id, text)
            return True
        except WebsocketDisconnectedError:
            return False
