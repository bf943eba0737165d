"""What the agent needs to know about each Claude model: its context window, how it takes the
`thinking` parameter, and whether it binds thinking blocks to the conversation that made them.

The ids are those of the installed `anthropic` package's `Model` literal (anthropic 2.14.0,
`anthropic/types/model.py`); `tests/unit/test_models_catalog.py` fails when the package lists a
model this table (or the price table) lacks. Facts from the model pages under
platform.claude.com/docs/en/about-claude/models (checked 2026-11-26).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ThinkingOff = Literal["disabled", "between_tools"]


@dataclass(frozen=True)
class ModelSpec:
    """The request-shaping facts of one model."""

    context_window: int
    # How to turn thinking off; None when the model cannot (Opus 5.5, Fable 5.1+: always adaptive).
    thinking_off: ThinkingOff | None = "disabled"
    # Accepts {"type": "enabled", "budget_tokens": N}; the 5.x line answers 400 to it.
    budget: bool = True
    # Accepts {"type": "adaptive"}.
    adaptive: bool = True
    # "Preserved thinking": a thinking block is rejected (400) when anything before it changed.
    binds_thinking: bool = False


_MILLION = 1_000_000
_LINE_5_5 = ModelSpec(_MILLION, thinking_off=None, budget=False, binds_thinking=True)

MODELS: dict[str, ModelSpec] = {
    "claude-fable-5-2": _LINE_5_5,
    "claude-mythos-5-2": _LINE_5_5,
    "claude-haiku-5-5": ModelSpec(_MILLION, thinking_off="disabled", budget=False, binds_thinking=True),
    # Sonnet 5.5 replaces `disabled` with `between_tools` (no up-front thinking).
    "claude-sonnet-5-5": ModelSpec(_MILLION, thinking_off="between_tools", budget=False, binds_thinking=True),
    "claude-fable-5-1": _LINE_5_5,
    "claude-opus-5-5": _LINE_5_5,
    "claude-mythos-5-1": _LINE_5_5,
    "claude-sonnet-5": ModelSpec(_MILLION, budget=False),
    "claude-fable-5": ModelSpec(_MILLION, thinking_off=None, budget=False),
    "claude-mythos-5": ModelSpec(_MILLION, thinking_off=None, budget=False),
    "claude-opus-5": ModelSpec(_MILLION),
    "claude-opus-4-8": ModelSpec(_MILLION, budget=False),
    "claude-opus-4-7": ModelSpec(_MILLION, budget=False),
    "claude-mythos-preview": ModelSpec(_MILLION, budget=False),
    "claude-opus-4-6": ModelSpec(_MILLION),
    "claude-sonnet-4-6": ModelSpec(_MILLION),
    "claude-haiku-4-5": ModelSpec(200_000, adaptive=False),
    "claude-opus-4-5": ModelSpec(200_000, adaptive=False),
    "claude-sonnet-4-5": ModelSpec(200_000, adaptive=False),
}
# An id we do not know: the smallest current window, so compaction starts early rather than late.
UNKNOWN_MODEL = ModelSpec(200_000)

# The budget used for "adaptive" on a model that only takes fixed budgets (the 4.5 line).
FALLBACK_BUDGET = 8_000
MIN_BUDGET = 1_024

ThinkingSetting = Literal["off", "adaptive"] | int


def spec_for(model: str) -> ModelSpec:
    """The spec of `model`; dated ids (`claude-haiku-4-5-20251001`) match their alias."""
    if model in MODELS:
        return MODELS[model]
    matches = [m for m in MODELS if model.startswith(m + "-")]
    return MODELS[max(matches, key=len)] if matches else UNKNOWN_MODEL


def thinking_param(setting: ThinkingSetting | None, spec: ModelSpec) -> dict[str, Any] | None:
    """The API's `thinking` parameter for a user's setting on a model; None sends nothing
    (the model's default, which on the 5.x line is adaptive thinking)."""
    if setting is None:
        return None
    if setting == "off":
        return {"type": spec.thinking_off} if spec.thinking_off else None
    if setting == "adaptive":
        if spec.adaptive:
            # `display: summarized` so the console has thinking to show (some models omit it by default).
            return {"type": "adaptive", "display": "summarized"} if spec.binds_thinking else {"type": "adaptive"}
        return {"type": "enabled", "budget_tokens": FALLBACK_BUDGET}
    budget = int(setting)
    if spec.budget:
        return {"type": "enabled", "budget_tokens": max(MIN_BUDGET, budget)}
    # Models without fixed budgets answer 400 to one; adaptive is what they offer instead.
    return {"type": "adaptive", "display": "summarized"} if spec.binds_thinking else {"type": "adaptive"}


def max_tokens_for(thinking: dict[str, Any] | None, max_tokens: int) -> int:
    """`max_tokens` must exceed a fixed thinking budget, or the API refuses the request."""
    if thinking and thinking.get("type") == "enabled":
        budget = int(thinking["budget_tokens"])
        if budget >= max_tokens:
            return budget + max_tokens
    return max_tokens
