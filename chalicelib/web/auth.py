"""Bearer-token auth for every route but /health: who is calling (`authenticate`).

The bearer is the operator's API_KEY, or an end user's token (a JWT from the identity provider,
or minted by POST /users/{userId}/tokens) when the server accepts user tokens.
The original skipped auth entirely when API_KEY was unset. Here production fails closed, and
development without a key works but says so loudly at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from chalicelib.config import Settings
from chalicelib.errors import Misconfigured, Unauthorized
from chalicelib.identity.principal import OPERATOR, Principal
from chalicelib.identity.token_shape import looks_like_jwt
from chalicelib.security import bearer_token, key_matches

if TYPE_CHECKING:
    from chalicelib.identity.user_tokens import UserTokens  # imports PyJWT: only when a token comes

log = logging.getLogger(__name__)
_warned = False


def authenticate(settings: Settings, headers: Mapping[str, str], user_tokens: Callable[[], UserTokens]) -> Principal:
    """The caller's role: an `EndUser` for a verified user token, else the operator (API_KEY).

    A bearer that is not the API key but has a JWT's shape is verified as a user token (when
    the server accepts them): a refusal says why, instead of calling it a wrong API key.
    """
    token = bearer_token(headers)
    if token is not None and settings.auth.accepts_user_tokens and looks_like_jwt(token) and not key_matches(settings, token):
        return user_tokens().verify(token)
    require_api_key(settings, headers)
    return OPERATOR


def user_token_among(settings: Settings, *candidates: str | None) -> str | None:
    """The first of `candidates` that is a user token (a JWT's shape, and not the API key), or
    None when there is none or the server accepts no user tokens.

    The websocket edges take a user token from several places (a header, the query, a Socket.IO
    `auth` payload) beside the /setup token and the API key; this tells them apart the way
    `authenticate` does for REST, without verifying anything.
    """
    if not settings.auth.accepts_user_tokens:
        return None
    return next((t for t in candidates if t and looks_like_jwt(t) and not key_matches(settings, t)), None)


def require_api_key(settings: Settings, headers: Mapping[str, str]) -> None:
    """Raise unless the request carries the API key (or auth is off in development)."""
    if settings.api_key is None:
        if settings.is_production:
            raise Misconfigured(
                "API_KEY is not set on the server, so every request is refused (ENVIRONMENT=production). "
                "Store it with ./scripts/put-secrets and redeploy.",
                code="api_key_not_configured",
            )
        warn_if_open(settings)
        return
    token = bearer_token(headers)
    if token is None:
        raise Unauthorized(
            "Missing credentials: send 'Authorization: Bearer <API_KEY>'.", code="missing_api_key"
        )
    if not key_matches(settings, token):
        raise Unauthorized("Invalid API key: check the Bearer token against the server's API_KEY.", code="invalid_api_key")


def warn_if_open(settings: Settings) -> None:
    """Log, once per process, that development is running without auth."""
    global _warned
    if settings.api_key is None and not settings.is_production and not _warned:
        _warned = True
        log.warning(
            "API_KEY is not set: the API accepts requests WITHOUT authentication (development only). "
            "Set API_KEY to require 'Authorization: Bearer <API_KEY>'."
        )
