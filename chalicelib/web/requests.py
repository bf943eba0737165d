"""Reading a request: JSON bodies into pydantic models, query parameters, write conditions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from chalice.app import Request
from pydantic import BaseModel, ValidationError

from chalicelib import safejson
from chalicelib.errors import BadRequest, InvalidJSON, PayloadTooLarge, UnsupportedMediaType
from chalicelib.safejson import UnsafeJSON

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class WriteConditions:
    """If-Match / If-None-Match: * from the request, passed down to conditional writes."""

    if_match: str | None = None
    if_none_match: bool = False


class ApiRequest:
    """What a route handler needs from the Chalice request, parsed and validated."""

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in (self._request.headers or {}).items()}

    @property
    def body_size(self) -> int:
        """The body's length in bytes (what an upload adds to the user's storage)."""
        raw = self._request.raw_body or b""
        return len(raw.encode() if isinstance(raw, str) else raw)

    def query(self, name: str) -> str | None:
        """A query-string parameter, or None."""
        params: Mapping[str, str] = self._request.query_params or {}
        value = params.get(name)
        return value if value not in (None, "") else None

    def query_int(self, name: str, *, default: int, minimum: int, maximum: int) -> int:
        """An integer query parameter within [minimum, maximum], or a 400 that says so."""
        raw = self.query(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"Query parameter {name}={raw!r} must be a whole number.", code=f"invalid_{name}") from None
        if not minimum <= value <= maximum:
            raise BadRequest(f"Query parameter {name}={value} must be between {minimum} and {maximum}.", code=f"invalid_{name}")
        return value

    def conditions(self) -> WriteConditions:
        """The write preconditions the client asked for."""
        headers = self.headers
        if_none_match = headers.get("if-none-match")
        if if_none_match is not None and if_none_match.strip() != "*":
            raise BadRequest(
                "If-None-Match supports only '*' (create only); use If-Match with an ETag to update.",
                code="invalid_precondition",
            )
        if_match = headers.get("if-match")
        return WriteConditions(if_match=if_match.strip() if if_match else None, if_none_match=if_none_match is not None)

    def raw_json(self, *, max_bytes: int = DEFAULT_MAX_BODY) -> Any:
        """The body as JSON; 415 for another content type, 413 past `max_bytes`, 400 if malformed."""
        content_type = self.headers.get("content-type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(
                f"Content-Type {content_type or '(none)'!r} is not supported: send a JSON body with "
                "'Content-Type: application/json'.",
            )
        body = self._request.raw_body or b""
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"The body is {len(body)} bytes; the limit here is {max_bytes} bytes.")
        text = _utf8(body if isinstance(body, bytes) else body.encode("utf-8"), content_type)
        if not text.strip():
            raise InvalidJSON("The request body is empty: send a JSON object.", code="empty_body")
        try:
            return safejson.loads(text)
        except UnsafeJSON as exc:
            raise InvalidJSON(exc.message, code=exc.code) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidJSON(f"The body is not valid JSON ({exc}).") from None

    def raw_bytes(self, *, max_bytes: int, what: str = "The body", setting: str | None = None) -> bytes:
        """The body as bytes (any content type); 413 past `max_bytes` (naming the `setting` that sets it)."""
        raw = self._request.raw_body or b""
        body = raw.encode() if isinstance(raw, str) else raw
        if len(body) > max_bytes:
            fix = f" ({setting}): send less, or raise {setting}." if setting else "."
            raise PayloadTooLarge(f"{what} is {len(body)} bytes; the limit is {max_bytes} bytes{fix}", code="upload_too_large")
        return body

    def body(self, model: type[ModelT], *, max_bytes: int = DEFAULT_MAX_BODY) -> ModelT:
        """The JSON body validated into `model`; a 400 lists every field that is wrong."""
        data = self.raw_json(max_bytes=max_bytes)
        if not isinstance(data, dict):
            raise BadRequest(f"The body must be a JSON object, not {type(data).__name__}.", code="invalid_body")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise BadRequest(f"Invalid request body: {describe_validation_error(exc)}.", code="invalid_body") from None


def _utf8(body: bytes, content_type: str) -> str:
    """The body as text, if it is UTF-8 (RFC 8259: JSON exchanged between systems is UTF-8).

    Python's json would also take UTF-16 and UTF-32 bytes, which a proxy, WAF or log in front
    of the API reads as something else: anything but UTF-8 is refused, BOM included.
    """
    charset = next((p.split("=", 1)[1].strip().strip('"').lower() for p in content_type.split(";")[1:]
                    if p.strip().lower().startswith("charset=")), None)
    if charset is not None and charset not in ("utf-8", "utf8"):
        raise BadRequest(f"charset={charset} is not supported: send the JSON body as UTF-8 (charset=utf-8).",
                         code="invalid_encoding")
    if body.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise BadRequest("The body starts with a byte order mark: send UTF-8 JSON without one.", code="invalid_encoding")
    if b"\x00" in body:  # never in JSON text; every other character of UTF-16/32 JSON has them
        raise BadRequest("The body has NUL bytes, as UTF-16 or UTF-32 text does: send JSON encoded as UTF-8.",
                         code="invalid_encoding")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"The body is not valid UTF-8 (byte {exc.start}): send JSON encoded as UTF-8.",
                         code="invalid_encoding") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: `field: message`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
