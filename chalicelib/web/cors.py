"""CORS for the REST API, and the Origin check of the WebSocket, from one allow-list.

Allowed origins come from CORS_ALLOW_ORIGINS. When it is unset: none in production; in
development, `*` when API_KEY is set (a page on another origin still needs the key), and
otherwise only the local console's own origin, so that a page on any other origin cannot drive
an open development server (a drive-by) through the visitor's browser.
"""

from __future__ import annotations

from collections.abc import Mapping

from chalicelib.config import Settings

ALLOW_HEADERS = "Authorization, Content-Type, If-Match, If-None-Match"
EXPOSE_HEADERS = "ETag, Retry-After"


def request_origin(headers: Mapping[str, str]) -> str | None:
    """The request's Origin header (browsers send it; other clients usually do not)."""
    return next((v for k, v in headers.items() if k.lower() == "origin"), None)


def allowed_origin(settings: Settings, headers: Mapping[str, str]) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when this origin is not allowed."""
    origin = request_origin(headers)
    if origin is None:
        return None
    allowed = settings.cors_allow_origins
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def origin_refused(settings: Settings, headers: Mapping[str, str]) -> str | None:
    """Why a browser request from its Origin must be refused, or None when it may go on.

    A request without an Origin header is not a cross-origin browser request (curl, the SDKs,
    scripts/chat), so it is never refused here; authentication still applies to it.
    """
    origin = request_origin(headers)
    if origin is None or allowed_origin(settings, headers) is not None:
        return None
    return (f"Origin {origin!r} is not allowed to call this server: add it to CORS_ALLOW_ORIGINS "
            "(comma-separated) on the server if this page should have access.")


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
