"""The local gateway's log filters: readable access logs that never hold a session token."""

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


def skip_management_calls(record: logging.LogRecord) -> bool:
    """Keep the access log readable: one streamed answer makes thousands of /@connections calls."""
    message = record.getMessage()
    return "/@connections/" not in message and "/%40connections/" not in message  # uvicorn logs it quoted


def install() -> None:
    """Attach the filters to the loggers uvicorn writes requests to (filters on a logger see
    only the records logged to it, so each logger that logs a path gets its own)."""
    redaction = RedactTokens()
    for name in ("uvicorn.access", "uvicorn.error", "gateway"):
        logging.getLogger(name).addFilter(redaction)
    logging.getLogger("uvicorn.access").addFilter(skip_management_calls)
