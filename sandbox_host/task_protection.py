"""ECS task scale-in protection, held while the host has sessions.

When the service scales in, ECS stops tasks it picks; a protected task is never picked. The
host asks for protection through the ECS agent on its own instance (`PUT
$ECS_AGENT_URI/task-protection/v1/state`): it needs no IAM permission and no cluster or task
ARN, which the agent knows. Protection expires after `minutes` unless renewed, so a host that
hangs cannot pin the fleet's size for ever; a live host renews it at half time.

Outside ECS (no ECS_AGENT_URI) there is nothing to protect and nothing is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("sandbox_host.task_protection")

AGENT_TIMEOUT = 2.0


class _ProtectionState(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ProtectionEnabled: bool


class _AgentAnswer(BaseModel):
    """The agent's answer: `protection` on success, else `failure` or `error` (each a small object)."""

    model_config = ConfigDict(extra="ignore")
    protection: _ProtectionState | None = None
    failure: dict[str, object] | None = None
    error: dict[str, object] | None = None


class ProtectionSettings(BaseModel):
    """Where the ECS agent answers (None outside ECS) and how long one grant lasts."""

    model_config = ConfigDict(frozen=True)
    agent_uri: str | None = None
    # ECS accepts 1 to 2,880 minutes.
    minutes: int = Field(default=60, ge=1, le=2880)


class TaskProtection:
    """Holds or releases this task's scale-in protection; safe to call from any thread, often."""

    def __init__(self, settings: ProtectionSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        # A task starts unprotected.
        self.held = False
        self._renew_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.agent_uri is not None

    def hold(self, wanted: bool) -> bool:
        """Make protection `wanted`, renewing a held grant past half its time; return whether it is
        held. A refused or failed call is logged and changes nothing (the next call tries again):
        the sessions keep running either way."""
        if not self.enabled:
            return False
        with self._lock:
            now = self._clock()
            if wanted == self.held and (not wanted or now < self._renew_at):
                return self.held
            body: dict[str, object] = {"ProtectionEnabled": wanted}
            if wanted:
                body["ExpiresInMinutes"] = self.settings.minutes
            url = f"{str(self.settings.agent_uri).rstrip('/')}/task-protection/v1/state"
            try:
                response = httpx.put(url, json=body, timeout=AGENT_TIMEOUT)
                answer = _AgentAnswer.model_validate_json(response.content)
            except (httpx.HTTPError, ValidationError) as exc:
                log.warning("task protection %s: the ECS agent did not answer usefully (%s)",
                            "request" if wanted else "release", type(exc).__name__)
                return self.held
            if answer.protection is None:
                log.warning("task protection %s refused (HTTP %s): %s", "request" if wanted else "release",
                            response.status_code, answer.failure or answer.error or response.text[:200])
                return self.held
            self.held = answer.protection.ProtectionEnabled
            self._renew_at = now + self.settings.minutes * 60 / 2
            log.info("task protection %s", "held" if self.held else "released")
            return self.held
