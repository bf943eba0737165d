"""Opaque cursors for list endpoints: clients pass back what they were given, nothing more."""

from __future__ import annotations

import base64
import json
from typing import Any

from chalicelib import safejson
from chalicelib.errors import BadRequest

MAX_LIMIT = 1000


def encode_cursor(state: dict[str, Any]) -> str:
    """An opaque, URL-safe cursor holding `state`."""
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """The state inside a cursor we issued; 400 for anything else."""
    if cursor is None:
        return None
    try:
        state = safejson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        state = None
    if not isinstance(state, dict):
        raise BadRequest(
            "Invalid cursor: pass back the nextCursor of the previous page unchanged, or omit it to start over.",
            code="invalid_cursor",
        )
    return state
