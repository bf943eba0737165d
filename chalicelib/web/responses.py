"""Turning results and errors into Chalice responses, always JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chalice import Response
from pydantic import BaseModel

from chalicelib.errors import AppError

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Reply:
    """A handler's answer when it needs a status or headers besides the body."""

    body: BaseModel | dict[str, Any]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def to_json(body: BaseModel | dict[str, Any]) -> str:
    """Serialise with the API's field names (camelCase aliases)."""
    if isinstance(body, BaseModel):
        return body.model_dump_json(by_alias=True)
    return json.dumps(body, separators=(",", ":"), default=str)


def json_response(body: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A Chalice Response with a JSON body."""
    return Response(body=to_json(body), status_code=status, headers={**JSON_HEADERS, **(headers or {})})


def error_response(error: AppError) -> Response:
    """`{"error": "<what was wrong and what to do>", "code": "<machine code>"}`."""
    return json_response({"error": error.message, "code": error.code}, error.status, error.headers)


def etag_header(etag: str | None) -> dict[str, str]:
    """The ETag header of a write or read, when there is one."""
    return {"ETag": etag} if etag else {}
