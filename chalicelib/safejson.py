"""Parsing untrusted JSON: bounded nesting and finite numbers only.

Python's `json` recurses once per nesting level, so a body of a few thousand `[` raised
RecursionError (a 500) in the parser, in pydantic or when the stored document was serialised
again; and it accepts `NaN` and `Infinity`, which are not JSON and which other clients cannot
read back. Every body, frame and stored document that came from a client goes through `loads`.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

#: Deep enough for any conversation or setting the product writes (a message's tool input is
#: about five levels in), shallow enough to stay far from the interpreter's recursion limit.
MAX_JSON_DEPTH = 64

# A JSON string, unrolled so the regex engine does not backtrack per character.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class UnsafeJSON(ValueError):
    """Valid-looking JSON we refuse; `code` is the API's machine code for it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def nesting_depth(data: bytes) -> int:
    """The deepest array/object nesting in `data`, ignoring brackets inside strings.

    Linear and iterative: it never recurses, whatever the input.
    """
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(_DELTA[b] for b in brackets), default=0)


def _refuse_constant(name: str) -> Any:
    raise UnsafeJSON(
        f"{name} is not a JSON number: send finite numbers only (or a string such as \"{name}\").",
        code="json_non_finite",
    )


def loads(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON, refusing nesting deeper than `max_depth` and NaN/Infinity.

    Raises UnsafeJSON (a ValueError) for those, and ValueError for malformed JSON, so
    callers that already catch ValueError keep working.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise UnsafeJSON(
            f"The JSON nests {depth} levels deep; at most {max_depth} are allowed. Flatten the structure.",
            code="json_too_deep",
        )
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:  # the scan above makes this unreachable; keep the 400 if it ever is not
        raise UnsafeJSON(f"The JSON nests too deeply; at most {max_depth} levels are allowed.", code="json_too_deep") from None
