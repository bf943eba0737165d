"""One agent turn as the turn runner calls it: choose model and limits, build the prompt, run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chalicelib.agent.context import current_skill_index, system_blocks, system_sha256
from chalicelib.agent.loop import TurnResult, run_turn, turn_attributes
from chalicelib.agent.memory import AgentMemory, WorkingContext
from chalicelib.agent.model_client import build_client
from chalicelib.agent.models import max_tokens_for, spec_for, thinking_param
from chalicelib.agent.permissions import AskUser, ToolGate
from chalicelib.agent.pricing import PriceTable
from chalicelib.agent.server_tools import server_tools
from chalicelib.agent.session_options import SessionOptions
from chalicelib.agent.tools import TOOLS
from chalicelib.config import Settings
from chalicelib.sandbox.base import Sandbox
from chalicelib.services.conversation_parts import RecentHistory
from chalicelib.services.quotas import QuotasService, daily_budget_reached
from chalicelib.services.usage import TurnUsage, UsageService
from chalicelib.services.user_settings import UserSettings, UserSettingsService
from chalicelib.telemetry import tracing

log = logging.getLogger(__name__)

MAX_TURNS_CAP = 200


class AgentTurn:
    """Callable used by TurnRunner; holds the client and price table across turns."""

    def __init__(self, settings: Settings, user_settings: UserSettingsService, *, usage: UsageService | None = None,
                 quotas: QuotasService | None = None) -> None:
        self.settings = settings
        self.user_settings = user_settings
        self.usage = usage  # each turn is metered into the user's daily usage
        self.quotas = quotas  # USER_DAILY_BUDGET_USD bounds each turn by what the day has left
        self.prices = PriceTable.from_json(settings.agent.price_table_json)
        self._client: Any = None

    def __call__(self, *, session_id: str, user_id: str, prompt: str, prompt_id: str, history: list[dict[str, Any]],
                 model: str | None, max_turns: int | None, sandbox: Sandbox, emit: Any, should_stop: Any,
                 on_messages_changed: Any, metadata: dict[str, Any], memory: AgentMemory | None = None,
                 save_memory: Callable[[AgentMemory], None] | None = None, conversation_id: str = "",
                 ask_permission: AskUser | None = None, durable: Callable[..., Any] | None = None,
                 options: SessionOptions | None = None, prefs: UserSettings | None = None,
                 turn_id: str | None = None, spent_today: float | None = None) -> TurnResult:
        """Run one message. `prefs`: the user's settings when the caller read them already (the
        runner reads them alongside the conversation); `turn_id` names the turn's usage record;
        `spent_today`: the day's cost as the edge just checked it (None: listed here)."""
        with tracing.span("turn", {"session.id": session_id, "turn.prompt_id": prompt_id}) as span:
            if self._client is None:
                self._client = build_client(self.settings.agent)
            memory = memory or AgentMemory()
            save = save_memory or (lambda _: None)
            # `durable(action, what)` retries a storage outage as the caller's other writes do.
            if prefs is None:
                prefs = (durable(lambda: self.user_settings.get(user_id), "reading the user's settings") if durable is not None
                         else self.user_settings.get(user_id))
            if options is not None:
                prefs = options.apply(prefs)
            # The model: what `start` asked for, then the user's settings, then the server default.
            chosen_model = model or prefs.model or self.settings.agent.default_model
            turns = min(max_turns or prefs.max_turns or self.settings.agent.default_max_turns, MAX_TURNS_CAP)

            index, index_changed = current_skill_index(sandbox, memory.skill_index)
            memory.skill_index = index
            system = system_blocks(index, prefs.system_prompt)
            server = server_tools(prefs, _approver(ask_permission, prompt_id))
            digest = system_sha256(system, TOOLS + server.tools)
            context, context_changed = _context_for(memory.context, conversation_id, metadata, history, digest, chosen_model)
            memory.context = context
            if isinstance(history, RecentHistory) and max(context.kept_from - 1, 0) < history.loaded_from:
                # The stored conversation was read from its recorded compaction point, but this
                # session's context starts earlier (none yet, or another session's): read the rest.
                history = history.whole()
            if index_changed or context_changed:
                save(memory)
            # Kept with the conversation (saved anyway): the next message sees what this one was sent with.
            metadata["model"] = chosen_model
            metadata["systemSha256"] = digest

            def keep_context(updated: WorkingContext) -> None:
                memory.context = updated
                save(memory)

            thinking = thinking_param(prefs.thinking, spec_for(chosen_model))
            daily_left = self._daily_budget_left(user_id, spent_today)
            result = run_turn(
                client=self._client, model=chosen_model, system=system, history=history,
                prompt=prompt, prompt_id=prompt_id, max_turns=turns,
                max_tokens=max_tokens_for(thinking, self.settings.agent.max_tokens),
                sandbox=sandbox, prices=self.prices, emit=emit, should_stop=should_stop, on_messages_changed=on_messages_changed,
                context=context, on_context_changed=keep_context, context_window=self.settings.agent.context_window_tokens,
                thinking=thinking,
                gate=ToolGate(prefs.permissions, ask_permission, self.settings.agent.permission_timeout_seconds),
                server=server, budget_usd=_budget(prefs.max_budget_usd, self.settings.agent.max_budget_usd, daily_left),
            )
            self._meter(user_id, session_id, result, turn_id)
            span.set({**turn_attributes(result), "gen_ai.request.model": chosen_model})
            if result.error_code:
                span.fail(result.error_code)
        return result

    def _daily_budget_left(self, user_id: str, spent_today: float | None = None) -> float | None:
        """What USER_DAILY_BUDGET_USD leaves today (None: no daily budget); a message when
        nothing is left is refused before it costs anything."""
        if self.quotas is None or self.usage is None:
            return None
        budget = self.quotas.limits(user_id).daily_budget_usd
        if budget is None:
            return None
        left = budget - (spent_today if spent_today is not None else self.usage.spent_today(user_id))
        if left <= 0:
            raise daily_budget_reached(user_id, budget)
        return left

    def _meter(self, user_id: str, session_id: str, result: TurnResult, turn_id: str | None) -> None:
        """Add the turn to the user's usage; a failure is logged, the turn's answer stands."""
        if self.usage is None:
            return
        used = TurnUsage(turns=result.turns, input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens,
                         cache_read_tokens=result.usage.cache_read_input_tokens,
                         cache_creation_tokens=result.usage.cache_creation_input_tokens, cost_usd=result.cost_usd)
        try:
            self.usage.record(user_id, session_id, used, turn_id)
        except Exception:  # noqa: BLE001 - metering must not turn a finished answer into an error
            log.exception("usage of a turn of user %s was not recorded", user_id)


def _approver(ask_permission: AskUser | None, prompt_id: str) -> Callable[[str, dict[str, Any]], bool] | None:
    """Asks, once per message, whether a server tool the settings say `ask` for may be used."""
    if ask_permission is None:
        return None
    return lambda name, shown: ask_permission(f"server-{name}-{prompt_id}", name, shown).decision == "allow"


def _budget(user: float | None, server: float | None, daily_left: float | None = None) -> float | None:
    """The strictest of the user's per-message budget, the server's ceiling and what the user's
    daily budget leaves."""
    limits = [b for b in (user, server, daily_left) if b is not None]
    return min(limits) if limits else None


def _context_for(known: WorkingContext | None, conversation_id: str, metadata: dict[str, Any], history: list[dict[str, Any]],
                 digest: str, model: str) -> tuple[WorkingContext, bool]:
    """The working context for this message, and whether it differs from what was stored.

    A thinking block's signature covers the model and everything before it, so when the system
    prompt (skills, settings) or the model changed since the last message, or nobody knows what
    the history was sent with, earlier thinking blocks are left out from here on.
    """
    context = known if known is not None and known.valid_for(conversation_id, history) else None
    changed = context is None and known is not None
    if context is None:
        context = WorkingContext(conversation_id=conversation_id)
    same_prefix = metadata.get("systemSha256") == digest and metadata.get("model") == model
    if history and not same_prefix and context.thinking_from < len(history):
        context = context.model_copy(update={"thinking_from": len(history)})
        changed = True
    return context, changed
