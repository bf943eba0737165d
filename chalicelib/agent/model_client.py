"""The anthropic client, built from settings; the API key stays in this process."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from chalicelib.config import AgentSettings
from chalicelib.errors import AppError

if TYPE_CHECKING:
    import anthropic

MISSING_KEY = (
    "ANTHROPIC_API_KEY is not set on the server, so the agent cannot run. Set it in the server's "
    "environment (locally: export it or put it in .env; in AWS: ./scripts/put-secrets) and restart."
)


# The SDK logs whole request options at DEBUG (ANTHROPIC_LOG=debug, or a root logger at DEBUG),
# and the MCP connector's request carries the user's server tokens: they must never reach a log.
_TOKEN = re.compile(r"""(['"]authorization_token['"]\s*:\s*)(['"])(?:(?!\2).)*\2""")


class RedactTokens(logging.Filter):
    """Masks `authorization_token` values in a log record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "authorization_token" in message:
            record.msg, record.args = _TOKEN.sub(r"\1\2********\2", message), None
        return True


def _redact_sdk_logs() -> None:
    for name in ("anthropic._base_client", "anthropic"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def build_client(settings: AgentSettings) -> anthropic.Anthropic:
    """An Anthropic client with the SDK's own retries (429/5xx, honouring retry-after)."""
    _redact_sdk_logs()
    if settings.anthropic_api_key is None:
        raise AppError(MISSING_KEY, code="anthropic_api_key_missing")
    # Imported here, not at the top: the websocket handlers read MISSING_KEY from this module,
    # and their cold starts must not load the SDK.
    import anthropic

    return anthropic.Anthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        max_retries=settings.max_retries,
        timeout=anthropic.Timeout(600.0, connect=10.0),
    )
