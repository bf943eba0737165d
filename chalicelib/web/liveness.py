"""Whether a websocket connection is still open, asked of API Gateway's management API.

The connection cap (WS_CONNECTIONS_PER_SESSION) counts the connections recorded in a session's
state; one that went without a $disconnect (a killed local server, a lost $disconnect) would
count for ever. At the cap, each recorded one is looked up (GetConnection): 410 Gone means it
is gone and is forgotten. The local gateway implements the same call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chalice.app import WebsocketDisconnectedError

log = logging.getLogger(__name__)


def open_check(websocket_api: Any, domain_name: str, stage: str) -> Callable[[str], bool]:
    """A check of connection ids on the API `websocket_api` serves (Chalice's WebsocketAPI)."""
    from chalicelib.realtime.sender import ChaliceSender

    ChaliceSender(websocket_api).configure(domain_name, stage)

    def is_open(connection_id: str) -> bool:
        try:
            websocket_api.info(connection_id)
        except WebsocketDisconnectedError:
            return False
        except Exception as exc:  # noqa: BLE001 - not known to be gone: it keeps counting
            log.warning("could not look connection %s up (%s): counted as open", connection_id, exc)
        return True

    return is_open
