"""Validation of every identifier and path that reaches a storage key or a sandbox path.

The original let `../` and `/` through to storage keys and sandbox paths; here nothing that
could escape its folder gets past these functions.
"""

from __future__ import annotations

import re
import unicodedata

from chalicelib.errors import BadRequest

# \A...\Z, not ^...$: `$` also matches before a trailing newline, which let "alice\n" through.
# Callers that still use `.match` get the whole-string check from the anchors.
ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# One path segment of a skill file: printable, no separators, not a dot-segment.
_SEGMENT = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._ -]{0,127}\Z")
MAX_SKILL_PATH_DEPTH = 8


def validate_id(value: str | None, kind: str) -> str:
    """Return `value` if it is a valid id of `kind` (userId, sessionId, ...), else raise BadRequest."""
    if value is None or value == "":
        raise BadRequest(f"{kind} is required.", code=f"missing_{_snake(kind)}")
    if value in (".", "..") or not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise BadRequest(
            f"Invalid {kind} {value!r}: use 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
            code=f"invalid_{_snake(kind)}",
        )
    return value


def validate_skill_path(path: str, what: str = "skill file path") -> str:
    """Return a safe relative path (segments joined by '/'), else raise BadRequest.

    Rejects absolute paths, backslashes, empty or dot segments, control characters and
    anything that is not NFC-normalised ASCII-safe text, so a path can never leave its folder.
    """
    if not isinstance(path, str) or path == "":
        raise BadRequest(f"The {what} is empty: give a relative path such as 'SKILL.md'.", code="invalid_skill_path")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise BadRequest(
            f"Invalid {what} {path!r}: it must be a relative path inside the skill's folder.",
            code="invalid_skill_path",
        )
    if unicodedata.normalize("NFC", path) != path:
        raise BadRequest(f"Invalid {what} {path!r}: it is not NFC-normalised.", code="invalid_skill_path")
    segments = path.split("/")
    if len(segments) > MAX_SKILL_PATH_DEPTH:
        raise BadRequest(
            f"Invalid {what} {path!r}: at most {MAX_SKILL_PATH_DEPTH} levels deep.", code="invalid_skill_path"
        )
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment) or segment.endswith((" ", ".")):
            raise BadRequest(
                f"Invalid {what} {path!r}: each part must be 1-128 letters, digits, spaces, '.', '_' "
                "or '-', must not be '.' or '..', and must not end in a space or dot.",
                code="invalid_skill_path",
            )
    return path


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
