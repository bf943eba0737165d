"""Credential checks shared by the REST edge and the websocket handlers."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from chalicelib.config import Settings


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (case-insensitive), or None."""
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(settings: Settings, token: str | None) -> bool:
    """Constant-time comparison of `token` with API_KEY (False when either is missing)."""
    if settings.api_key is None or token is None:
        return False
    return hmac.compare_digest(token.encode(), settings.api_key.get_secret_value().encode())
