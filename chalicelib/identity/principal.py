"""The two roles a caller can have, decided once at the edge for every request and connection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Operator:
    """The holder of API_KEY (or anyone, in development without one): every user, every route."""


@dataclass(frozen=True)
class EndUser:
    """The bearer of a verified user token: only `user_id`'s data and sessions."""

    user_id: str


Principal = Operator | EndUser
OPERATOR = Operator()
