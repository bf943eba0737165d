"""Token prices and the cost of a turn. The table is configurable (PRICE_TABLE, JSON).

Built-in prices: platform.claude.com/docs/en/about-claude/pricing ("Model pricing"), checked
2026-11-26, for every model id of the installed `anthropic` package (2.14.0). Cache reads are
not always 0.1x input there (Sonnet 5.5 and Opus 5.5: 0.05x, Fable/Mythos 5.1: 0.025x), so each
row states its own; a row without them defaults to 0.1x reads and 1.25x 5-minute writes.
"""

from __future__ import annotations

import json
import logging
import re
import threading

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.errors import Misconfigured

log = logging.getLogger(__name__)


class Price(BaseModel):
    """USD per million tokens. Cache reads default to 0.1x input, 5-minute cache writes to 1.25x.

    `long_prompt` applies to a whole request whose prompt (input + cache reads + cache writes)
    exceeds `long_prompt_tokens` (Haiku 5.5 bills such requests at its higher band).
    """

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)
    long_prompt_tokens: int | None = Field(default=None, ge=1)
    long_prompt: Price | None = None


class Usage(BaseModel):
    """Tokens summed over every API call of a turn."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def add(self, usage: object) -> None:
        """Add an SDK `Usage` or another Usage (missing cache fields count as zero)."""
        self.input_tokens += getattr(usage, "input_tokens", 0) or 0
        self.output_tokens += getattr(usage, "output_tokens", 0) or 0
        self.cache_read_input_tokens += getattr(usage, "cache_read_input_tokens", 0) or 0
        self.cache_creation_input_tokens += getattr(usage, "cache_creation_input_tokens", 0) or 0

    @classmethod
    def of(cls, usage: object) -> Usage:
        """A Usage holding one SDK usage object."""
        mine = cls()
        mine.add(usage)
        return mine

    @property
    def prompt_tokens(self) -> int:
        """Everything the model read: plain input plus cache reads and writes."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens

    def to_wire(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cacheReadInputTokens": self.cache_read_input_tokens,
            "cacheCreationInputTokens": self.cache_creation_input_tokens,
        }


def _p(input: float, output: float, cache_read: float, cache_write: float, **extra: object) -> Price:  # noqa: A002
    return Price(input=input, output=output, cache_read=cache_read, cache_write=cache_write, **extra)  # type: ignore[arg-type]


_OPUS_4_5_TO_5 = _p(5, 25, 0.50, 6.25)
_FABLE_5 = _p(10, 50, 1.00, 12.50)
_FABLE_5_1 = _p(10, 50, 0.25, 12.50)
_FABLE_5_2 = _p(8, 40, 0.20, 10.00)
_SONNET_4 = _p(3, 15, 0.30, 3.75)

# Exact model ids (a dated id such as claude-haiku-4-5-20251001 matches its alias).
DEFAULT_PRICES: dict[str, Price] = {
    "claude-fable-5-2": _FABLE_5_2,
    # Mythos has carried Fable's price at every version; the page lists Mythos 5.2 with Fable 5.2.
    "claude-mythos-5-2": _FABLE_5_2,
    "claude-haiku-5-5": _p(0.10, 0.50, 0.01, 0.125, long_prompt_tokens=100_000, long_prompt=_p(0.50, 2.50, 0.05, 0.625)),
    "claude-sonnet-5-5": _p(2, 10, 0.10, 2.50),  # cache reads cut from $0.20 on 2026-10-07
    "claude-fable-5-1": _FABLE_5_1,
    "claude-opus-5-5": _p(4, 20, 0.20, 5.00),
    "claude-mythos-5-1": _FABLE_5_1,
    "claude-sonnet-5": _p(2, 10, 0.20, 2.50),
    "claude-fable-5": _FABLE_5,
    "claude-mythos-5": _FABLE_5,
    "claude-opus-5": _OPUS_4_5_TO_5,
    "claude-opus-4-8": _OPUS_4_5_TO_5,
    "claude-opus-4-7": _OPUS_4_5_TO_5,
    # Retired 2026-06-30 and gone from the pricing page; priced as Mythos 5, its successor.
    "claude-mythos-preview": _FABLE_5,
    "claude-opus-4-6": _OPUS_4_5_TO_5,
    "claude-sonnet-4-6": _SONNET_4,
    "claude-haiku-4-5": _p(1, 5, 0.10, 1.25),
    "claude-opus-4-5": _OPUS_4_5_TO_5,
    "claude-sonnet-4-5": _SONNET_4,
}
# Ids the locked SDK no longer lists (anthropic 2.17 dropped Sonnet 4.5, retired 2026-11-30),
# kept in the tables so a stored conversation or a setting that still names one is priced and
# sized: the API answers for a retired id with an error the turn reports, never a wrong bill.
RETIRED_MODELS = frozenset({"claude-sonnet-4-5"})
_DATED = re.compile(r"-\d{8}$")


class PriceTable:
    """Prices by model id; PRICE_TABLE keys also match as prefixes."""

    def __init__(self, prices: dict[str, Price], prefixes: frozenset[str] = frozenset()) -> None:
        self.prices = prices
        self.prefixes = prefixes
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_json(cls, raw: str | None) -> PriceTable:
        """The defaults, overridden/extended by PRICE_TABLE: {"model-prefix": {"input": 3, "output": 15}}."""
        prices = dict(DEFAULT_PRICES)
        prefixes: frozenset[str] = frozenset()
        if raw:
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("it must be a JSON object")
                prices.update({k: Price.model_validate(v) for k, v in data.items()})
                prefixes = frozenset(data)
            except (ValueError, ValidationError) as exc:
                raise Misconfigured(
                    f'PRICE_TABLE is not valid ({exc}): use {{"claude-sonnet-5-5": {{"input": 2, "output": 10}}}} '
                    "(USD per million tokens).",
                    code="price_table_invalid",
                ) from None
        return cls(prices, prefixes)

    def price(self, model: str) -> Price | None:
        """The row for `model`: exact id, its alias without a date suffix, or a PRICE_TABLE prefix."""
        if model in self.prices:
            return self.prices[model]
        undated = _DATED.sub("", model)
        if undated in self.prices:
            return self.prices[undated]
        matches = [p for p in self.prefixes if model.startswith(p)]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for one request's `usage` on `model`; None when the model has no price (logged
        once per model: say so, don't guess)."""
        price = self.price(model)
        if price is None:
            with self._lock:
                first = model not in self._warned
                self._warned.add(model)
            if first:
                log.warning("No price for model %r: costUsd is null. Add it to PRICE_TABLE to price it.", model)
            return None
        if price.long_prompt is not None and price.long_prompt_tokens is not None and usage.prompt_tokens > price.long_prompt_tokens:
            price = price.long_prompt
        cache_read = price.cache_read if price.cache_read is not None else price.input * 0.1
        cache_write = price.cache_write if price.cache_write is not None else price.input * 1.25
        total = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_read_input_tokens * cache_read
            + usage.cache_creation_input_tokens * cache_write
        )
        return total / 1_000_000
