"""CORS for the REST API, so a console hosted on another origin can call it.

Allowed origins come from CORS_ALLOW_ORIGINS: `*` by default in development, none in
production unless configured.
"""

from __future__ import annotations

from collections.abc import Mapping

from chalicelib.config import Settings

ALLOW_HEADERS = "Authorization, Content-Type, If-Match, If-None-Match"
EXPOSE_HEADERS = "ETag, Retry-After"


def allowed_origin(settings: Settings, headers: Mapping[str, str]) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when this origin is not allowed."""
    origin = next((v for k, v in headers.items() if k.lower() == "origin"), None)
    if origin is None:
        return None
    allowed = settings.cors_allow_origins
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def cors_headers(settings: Settings, headers: Mapping[str, str]) -> dict[str, str]:
    """Headers to add to an actual response."""
    origin = allowed_origin(settings, headers)
    if origin is None:
        return {}
    result = {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSE_HEADERS}
    if origin != "*":
        result["Vary"] = "Origin"
    return result


def preflight_headers(settings: Settings, headers: Mapping[str, str], methods: list[str]) -> dict[str, str]:
    """Headers answering a preflight OPTIONS request."""
    base = cors_headers(settings, headers)
    if not base:
        return {}
    return {**base, "Access-Control-Allow-Methods": ", ".join(sorted({*methods, "OPTIONS"})),
            "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "600"}
