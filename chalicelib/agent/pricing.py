"""Token prices and the cost of a turn. The table is configurable (PRICE_TABLE, JSON)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.errors import Misconfigured


class Price(BaseModel):
    """USD per million tokens. Cache reads default to 0.1x input, 5-minute cache writes to 1.25x."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class Usage(BaseModel):
    """Tokens summed over every API call of a turn."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def add(self, usage: object) -> None:
        """Add an SDK `Usage` (missing cache fields count as zero)."""
        self.input_tokens += getattr(usage, "input_tokens", 0) or 0
        self.output_tokens += getattr(usage, "output_tokens", 0) or 0
        self.cache_read_input_tokens += getattr(usage, "cache_read_input_tokens", 0) or 0
        self.cache_creation_input_tokens += getattr(usage, "cache_creation_input_tokens", 0) or 0

    def to_wire(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cacheReadInputTokens": self.cache_read_input_tokens,
            "cacheCreationInputTokens": self.cache_creation_input_tokens,
        }


# Model-name prefixes, longest match wins. Sonnet 4.x $3/$15, Opus 4.5+ $5/$25, Haiku 4.5 $1/$5.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-sonnet-4": Price(input=3, output=15),
    "claude-opus-4-5": Price(input=5, output=25),
    "claude-opus-4-6": Price(input=5, output=25),
    "claude-opus-4-7": Price(input=5, output=25),
    "claude-opus-4-8": Price(input=5, output=25),
    "claude-haiku-4-5": Price(input=1, output=5),
}


class PriceTable:
    """Prices by model-name prefix."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices

    @classmethod
    def from_json(cls, raw: str | None) -> PriceTable:
        """The defaults, overridden/extended by PRICE_TABLE: {"model-prefix": {"input": 3, "output": 15}}."""
        prices = dict(DEFAULT_PRICES)
        if raw:
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("it must be a JSON object")
                prices.update({k: Price.model_validate(v) for k, v in data.items()})
            except (ValueError, ValidationError) as exc:
                raise Misconfigured(
                    f'PRICE_TABLE is not valid ({exc}): use {{"claude-sonnet-4": {{"input": 3, "output": 15}}}} '
                    "(USD per million tokens).",
                    code="price_table_invalid",
                ) from None
        return cls(prices)

    def price(self, model: str) -> Price | None:
        matches = [p for p in self.prices if model.startswith(p)]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for `usage` on `model`; None when the model has no price (say so, don't guess)."""
        price = self.price(model)
        if price is None:
            return None
        cache_read = price.cache_read if price.cache_read is not None else price.input * 0.1
        cache_write = price.cache_write if price.cache_write is not None else price.input * 1.25
        total = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_read_input_tokens * cache_read
            + usage.cache_creation_input_tokens * cache_write
        )
        return round(total / 1_000_000, 6)
