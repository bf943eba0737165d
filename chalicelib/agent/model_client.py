"""The anthropic client, built from settings; the API key stays in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.config import AgentSettings
from chalicelib.errors import AppError

if TYPE_CHECKING:
    import anthropic

MISSING_KEY = (
    "ANTHROPIC_API_KEY is not set on the server, so the agent cannot run. Set it in the server's "
    "environment (locally: export it or put it in .env; in AWS: ./scripts/put-secrets) and restart."
)


def build_client(settings: AgentSettings) -> anthropic.Anthropic:
    """An Anthropic client with the SDK's own retries (429/5xx, honouring retry-after)."""
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
