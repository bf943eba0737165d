"""`GET /me`: who a credential signs in as.

A client holding an end user's token cannot tell which user it names: the claim that is the
`userId` is the server's setting (AUTH_JWT_USER_CLAIM), and a token need not be readable by the
client at all. The console asks here once, and acts as that user.
"""

from __future__ import annotations

from typing import Literal

from chalicelib.identity.principal import EndUser, Principal
from chalicelib.services.models import ApiModel


class Caller(ApiModel):
    """`role` "operator" (the API key, or development without one: every user) or "user" (a
    user token: only `userId`'s data)."""

    role: Literal["operator", "user"]
    user_id: str | None


def describe(principal: Principal) -> Caller:
    """The answer of `GET /me` for `principal`."""
    if isinstance(principal, EndUser):
        return Caller(role="user", user_id=principal.user_id)
    return Caller(role="operator", user_id=None)
