"""The local gateway's log filter: no session token in any log line."""

from __future__ import annotations

import logging
import re

# `/ws?sessionId=...&token=...` is in every websocket access line; a token in a log file is
# a credential anyone who can read the log could reuse.
_TOKEN = re.compile(r"(?i)\b(token=)[^&\s\"']*")
REDACTED = r"\1[redacted]"


def redact(text: str) -> str:
    """`text` with every `token=<value>` replaced by `token=[redacted]`."""
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
