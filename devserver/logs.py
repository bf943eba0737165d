"""The local gateway's log filter: no session token in any log line."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

# `/ws?sessionId=...&token=...` is in every websocket access line; a token in a log file is
# a credential anyone who can read the log could reuse.
_TOKEN = re.compile(r"(?i)\b(token=)[^&\s\"']*")
REDACTED = r"\1[redacted]"
# Every query parameter, so its name can be judged decoded: the server reads `?%74oken=` (or
# `?TOKEN=`, `?access%5Ftoken=`) as the parameter it names, so the log must too.
_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&\s\"'?#;]+)=(?P<value>[^&\s\"'#;]*)")
SECRET_NAMES = frozenset({"token", "access_token", "id_token", "api_key", "apikey", "key", "secret", "password"})


def is_secret_name(name: str) -> bool:
    """Whether a query parameter named `name` (as it appears on the wire) holds a credential."""
    decoded = name
    for _ in range(3):  # %2574oken is %74oken once decoded: a proxy may decode twice
        once = unquote_plus(decoded)
        if once == decoded:
            break
        decoded = once
    decoded = decoded.strip().lower()
    return decoded in SECRET_NAMES or decoded.endswith("token")


def redact(text: str) -> str:
    """`text` with the value of every credential parameter (`token=`, `access_token=`, and any
    spelling that decodes to one) replaced by `[redacted]`."""
    text = _PARAM.sub(lambda m: f"{m['lead']}{m['name']}=[redacted]" if is_secret_name(m["name"]) else m[0], text)
    return _TOKEN.sub(REDACTED, text)


class RedactTokens(logging.Filter):
    """Rewrites each record with its tokens redacted (the formatted message, args folded in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def redact_tokens() -> None:
    """Redact tokens on every logger that writes request paths (a filter on a logger sees only
    the records logged to that logger, so each gets its own)."""
    redaction = RedactTokens()
    for name in ("uvicorn.access", "uvicorn.error", "gateway"):
        logging.getLogger(name).addFilter(redaction)
