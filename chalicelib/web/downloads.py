"""File downloads: raw bytes shaped as Chalice (and API Gateway) can carry them.

Chalice returns a body as binary only when its Content-Type is one of the app's binary types
and the client's Accept header matches one too; any other body must be text. So UTF-8 text goes
out as a string with its own type, and everything else as bytes of a binary type.
"""

from __future__ import annotations

from chalice import Response

from chalicelib.errors import NotAcceptable
from chalicelib.web.requests import ApiRequest

_TEXT_TYPES = {
    "application/json", "application/xml", "application/javascript", "application/x-sh", "application/x-yaml",
    "application/yaml", "application/toml", "image/svg+xml",
}


def file_response(request: ApiRequest, data: bytes, content_type: str, filename: str, binary_types: list[str]) -> Response:
    """A download of `data` named `filename`; 406 when the file is binary and Accept does not allow it."""
    headers = {"Content-Disposition": f'attachment; filename="{_header_safe(filename)}"'}
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in binary_types and (media.startswith("text/") or media in _TEXT_TYPES):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return Response(body=text, status_code=200, headers={**headers, "Content-Type": f"{media}; charset=utf-8"})
    media = media if media in binary_types else "application/octet-stream"
    if not _accepts(request.headers.get("accept", ""), media):
        raise NotAcceptable(f"The file is binary ({media}): send 'Accept: {media}' or 'Accept: */*' to download it.")
    return Response(body=data, status_code=200, headers={**headers, "Content-Type": media})


def _accepts(accept: str, media: str) -> bool:
    kinds = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {"*/*", media, media.split("/", 1)[0] + "/*"})


def _header_safe(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
