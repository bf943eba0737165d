"""Engine.IO v4 and Socket.IO v5 packets as text, over a websocket (one packet per message).

What python-socketio does for the local gateway, done by hand for API Gateway, which carries
websocket messages to Lambda and knows nothing of either protocol. Only what a websocket-only
client uses: no polling payloads, no binary attachments.

Engine.IO: `0` open (server → client, JSON handshake), `1` close, `2` ping, `3` pong, `4` message.
A Socket.IO packet rides in a message: `<type>[/<namespace>,][<ack id>][<json>]`, types
0 CONNECT, 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR (5 and 6 carry binary: refused here).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE, PING, PONG, MESSAGE = "0", "1", "2", "3", "4"
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR = 0, 1, 2, 3, 4

_SOCKET_PACKET = re.compile(r"^(?P<type>[0-6])(?:(?P<nsp>/[^,]*),)?(?P<id>\d+)?(?P<data>[\[{\"].*)?$", re.DOTALL)


class PacketError(Exception):
    """Text that is not a packet this server takes."""


@dataclass(frozen=True)
class SocketPacket:
    """A Socket.IO packet: type, namespace ("/" by default), ack id, decoded JSON payload."""

    type: int
    namespace: str = "/"
    ack_id: int | None = None
    data: Any = None


def open_packet(sid: str, ping_interval_ms: int, ping_timeout_ms: int, max_payload: int) -> str:
    """The handshake the server sends first: no upgrades (the websocket is the only transport)."""
    return OPEN + json.dumps({"sid": sid, "upgrades": [], "pingInterval": ping_interval_ms,
                              "pingTimeout": ping_timeout_ms, "maxPayload": max_payload}, separators=(",", ":"))


def engine_type(text: str) -> str:
    """The Engine.IO packet type of a websocket message (its first character)."""
    if not text or text[0] not in "0123456":
        raise PacketError("Not an Engine.IO packet.")
    return text[0]


def decode_socket(text: str) -> SocketPacket:
    """The Socket.IO packet inside an Engine.IO message (`text` without its leading `4`)."""
    match = _SOCKET_PACKET.match(text)
    if match is None:
        raise PacketError(f"Not a Socket.IO packet: {text[:40]!r}.")
    kind = int(match["type"])
    if kind > CONNECT_ERROR:
        raise PacketError("Binary Socket.IO packets are not supported: send JSON only.")
    data = None
    if match["data"] is not None:
        try:
            data = json.loads(match["data"])
        except ValueError as exc:
            raise PacketError(f"The packet's payload is not valid JSON ({exc}).") from None
    return SocketPacket(kind, match["nsp"] or "/", int(match["id"]) if match["id"] else None, data)


def encode_socket(kind: int, namespace: str = "/", data: Any = None, ack_id: int | None = None) -> str:
    """An Engine.IO message carrying one Socket.IO packet."""
    text = MESSAGE + str(kind)
    if namespace != "/":
        text += namespace + ","
    if ack_id is not None:
        text += str(ack_id)
    if data is not None:
        text += json.dumps(data, separators=(",", ":"), default=str)
    return text


def event(namespace: str, name: str, data: Any, ack_id: int | None = None) -> str:
    """`42[/ns,][id]["name",data]`."""
    return encode_socket(EVENT, namespace, [name, data], ack_id)
