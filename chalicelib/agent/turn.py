"""One agent turn as the turn runner calls it: choose model and limits, build the prompt, run."""

from __future__ import annotations

from typing import Any

from chalicelib.agent.context import system_prompt
from chalicelib.agent.loop import TurnResult, run_turn
from chalicelib.agent.model_client import build_client
from chalicelib.agent.pricing import PriceTable
from chalicelib.config import Settings
from chalicelib.sandbox.base import Sandbox
from chalicelib.services.user_settings import UserSettingsService

MAX_TURNS_CAP = 200


class AgentTurn:
    """Callable used by TurnRunner; holds the client and price table across turns."""

    def __init__(self, settings: Settings, user_settings: UserSettingsService) -> None:
        self.settings = settings
        self.user_settings = user_settings
        self.prices = PriceTable.from_json(settings.agent.price_table_json)
        self._client: Any = None

    def __call__(self, *, session_id: str, user_id: str, prompt: str, prompt_id: str, history: list[dict[str, Any]],
                 model: str | None, max_turns: int | None, sandbox: Sandbox, emit: Any, should_stop: Any,
                 on_messages_changed: Any, metadata: dict[str, Any]) -> TurnResult:
        if self._client is None:
            self._client = build_client(self.settings.agent)
        prefs = self.user_settings.get(user_id)
        # The model: what `start` asked for, then the user's settings, then the server default.
        chosen_model = model or prefs.model or self.settings.agent.default_model
        turns = min(max_turns or prefs.max_turns or self.settings.agent.default_max_turns, MAX_TURNS_CAP)
        metadata["model"] = chosen_model
        return run_turn(
            client=self._client, model=chosen_model, system=system_prompt(sandbox, prefs.system_prompt), history=history,
            prompt=prompt, prompt_id=prompt_id, max_turns=turns, max_tokens=self.settings.agent.max_tokens,
            sandbox=sandbox, prices=self.prices, emit=emit, should_stop=should_stop, on_messages_changed=on_messages_changed,
        )
