"""What the host does for the fleet around its sessions: it holds ECS scale-in protection while
it has any, and reports its load as metrics, once per interval and whenever its sessions change.

Configured from the environment the ECS task definition sets:

- `ECS_AGENT_URI` (set by ECS itself): where task protection is asked for; unset, none is.
- `SANDBOX_PROTECTION_MINUTES` (60): how long one grant lasts (renewed at half time).
- `SANDBOX_HOST_CAPACITY` (100): sessions the host is sized for, reported as `Capacity`.
- `SANDBOX_METRICS_INTERVAL` (60 s), `SANDBOX_METRICS_NAMESPACE` (ClaudeAgent/SandboxHosts),
  `SANDBOX_METRICS_SERVICE` (sandbox-hosts): the metrics' cadence, namespace and dimension.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TextIO

from pydantic import BaseModel, ConfigDict, ValidationError

from sandbox_host.metrics import MetricsSettings, emf_line, publish
from sandbox_host.task_protection import ProtectionSettings, TaskProtection

log = logging.getLogger("sandbox_host.operations")


class OperationsSettings(BaseModel):
    """Task protection and metrics settings of one host."""

    model_config = ConfigDict(frozen=True)
    protection: ProtectionSettings = ProtectionSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperationsSettings:
        """Read the variables above; a bad value stops the host with the variable named."""
        protection = {"agent_uri": env.get("ECS_AGENT_URI") or None, "minutes": env.get("SANDBOX_PROTECTION_MINUTES")}
        metrics = {"capacity": env.get("SANDBOX_HOST_CAPACITY"), "interval_seconds": env.get("SANDBOX_METRICS_INTERVAL"),
                   "namespace": env.get("SANDBOX_METRICS_NAMESPACE"), "service": env.get("SANDBOX_METRICS_SERVICE")}
        try:
            return cls(protection=ProtectionSettings(**{k: v for k, v in protection.items() if v is not None}),
                       metrics=MetricsSettings(**{k: v for k, v in metrics.items() if v is not None}))
        except ValidationError as exc:
            names = {"minutes": "SANDBOX_PROTECTION_MINUTES", "capacity": "SANDBOX_HOST_CAPACITY",
                     "interval_seconds": "SANDBOX_METRICS_INTERVAL"}
            wrong = ", ".join(names.get(str(e["loc"][-1]), str(e["loc"][-1])) + f": {e['msg']}" for e in exc.errors())
            raise SystemExit(f"The sandbox host cannot start: {wrong}.") from None


class Operations:
    """Protection and metrics for one host, from the counts its caller reports."""

    def __init__(self, settings: OperationsSettings, *, sessions: Callable[[], int], busy: Callable[[], int],
                 draining: Callable[[], bool], stream: TextIO | None = None) -> None:
        self.settings = settings
        self.protection = TaskProtection(settings.protection)
        self._sessions, self._busy, self._draining = sessions, busy, draining
        self._stream = stream
        self._host = socket.gethostname()
        self._stop = threading.Event()

    def sessions_changed(self) -> None:
        """Hold protection while there is a session, release it when there is none (drained or
        idle); called after every create, destroy and reap, so a new session is protected
        before its creator hears of it."""
        self.protection.hold(self._sessions() > 0)

    def tick(self) -> None:
        """One round: protection brought up to date (and renewed), then one metrics line."""
        sessions = self._sessions()
        self.protection.hold(sessions > 0)
        publish(emf_line(self.settings.metrics, self._host, sessions, self._busy(), self._draining()), self._stream)

    def run(self) -> None:
        """Tick every interval until `stop`; a failing round is logged and the next one runs."""
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("operations round failed")
            if self._stop.wait(self.settings.metrics.interval_seconds):
                return

    def stop(self) -> None:
        """End the loop and release protection (the host has ended its sessions)."""
        self._stop.set()
        self.protection.hold(False)
