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


@dataclass
class RawReply:
    """A handler's answer that is a file, not JSON: its bytes, content type and download name."""

    data: bytes
    content_type: str
    filename: str
    headers: dict[str, str] = field(default_factory=dict)


def file_response(reply: RawReply, binary_types: list[str]) -> Response:
    """The file as Chalice must carry it: text that is UTF-8 as a string with its own type,
    anything else as bytes of a type API Gateway treats as binary (else octet-stream)."""
    headers = {"Content-Disposition": f"attachment; filename=\"{_header_safe(reply.filename)}\"", **reply.headers}
    media = reply.content_type.split(";", 1)[0].strip().lower()
    if media not in binary_types and _is_text(media):
        try:
            text = reply.data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return Response(body=text, status_code=200, headers={**headers, "Content-Type": f"{media}; charset=utf-8"})
    media = media if media in binary_types else "application/octet-stream"
    return Response(body=reply.data, status_code=200, headers={**headers, "Content-Type": media})


def _is_text(media: str) -> bool:
    return media.startswith("text/") or media in {
        "application/json", "application/xml", "application/javascript", "application/x-sh", "application/x-yaml",
        "application/yaml", "application/toml", "image/svg+xml", "application/x-python-code",
    }


def _header_safe(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


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
