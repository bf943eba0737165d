"""Which routes a caller may reach: the one place ownership is decided, for REST and websocket.

The operator reaches every route. An end user reaches `/users/{own}/...`, `/setup/{sid}` for a
session that is new or already theirs, and a session's routes when they own the session.
Every refusal is the same 403 `forbidden_user`, whether the other user or session exists or
not, so a user token cannot be used to probe for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum

from chalicelib.errors import Forbidden
from chalicelib.identity.principal import EndUser, Principal


class Access(Enum):
    """Who may call a route."""

    PUBLIC = "public"  # no credentials (/health)
    OPERATOR = "operator"  # the API key only
    OWNER = "owner"  # the operator, or the user the path's userId / sessionId belongs to
    SETUP = "setup"  # OWNER, where the session may be new and ?userId= must be the caller's


FORBIDDEN_USER = (
    "This user token reaches only its own user's data and sessions (and not the operator's routes): "
    "use a token of the user who owns it, or the API key from your app's backend."
)

OwnerOf = Callable[[str], str | None]


def forbidden_user() -> Forbidden:
    return Forbidden(FORBIDDEN_USER, code="forbidden_user")


def authorize(principal: Principal, access: Access, params: Mapping[str, str], *, owner_of: OwnerOf,
              query_user: str | None = None) -> None:
    """Raise 403 `forbidden_user` unless `principal` may call a route of `access` with `params`.

    `owner_of(sessionId)` names the user a session belongs to (None: no trace of it), read only
    for an end user on a session route.
    """
    if not isinstance(principal, EndUser) or access is Access.PUBLIC:
        return
    if access is Access.OPERATOR:
        raise forbidden_user()
    user = principal.user_id
    if "userId" in params and params["userId"] != user:
        raise forbidden_user()
    if access is Access.SETUP and query_user is not None and query_user != user:
        raise forbidden_user()
    if "sessionId" in params:
        owner = owner_of(params["sessionId"])
        if owner != user and not (access is Access.SETUP and owner is None):
            raise forbidden_user()


def may_connect(principal: Principal, session_owner: str | None) -> bool:
    """Whether `principal` may open the agent websocket of a session owned by `session_owner`."""
    return not isinstance(principal, EndUser) or principal.user_id == session_owner
