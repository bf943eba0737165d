"""Telling a JWT from an API key by its shape, without importing any JOSE code (cold starts)."""

from __future__ import annotations


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated base64url segments: a JWT (an API key is never verified as one)."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts[:2]) and all(
        c.isascii() and (c.isalnum() or c in "-_") for part in parts for c in part
    )
