"""Issue 23's safe defaults: what a fresh deployment allows before the operator changes anything."""

from __future__ import annotations

from chalicelib.config import Settings


def test_a_fresh_deployment_has_a_per_message_budget() -> None:
    assert Settings.from_env({}).agent.max_budget_usd == 5.0
    assert Settings.from_env({"MAX_BUDGET_USD": "20"}).agent.max_budget_usd == 20.0
    assert Settings.from_env({"MAX_BUDGET_USD": "0"}).agent.max_budget_usd is None  # the operator's explicit choice
