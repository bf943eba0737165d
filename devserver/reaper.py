"""Idle sandboxes under ./scripts/dev are destroyed, as the sandbox host does for deployments.

Without it every session of a long local run keeps its workspace and its bash shell for as long
as the gateway lives. A session is idle when it was neither set up nor used by a turn for
SANDBOX_IDLE_TIMEOUT seconds; its next turn finds it gone and gets a fresh one (the turn runner
recreates a vanished sandbox and restores its workspace snapshot), or the client calls /setup again.

Unlike the sandbox host, the gateway holds storage credentials, so its reaper saves the workspace
before destroying it (`before_destroy`): what a background process wrote after the last turn's
save is kept too. While storage is down the sandbox is kept, and the next pass tries again, up
to a hard ceiling (SANDBOX_MAX_IDLE_SECONDS, default 4 x the idle timeout): past it the sandbox is
destroyed anyway, so no workspace and no failing store can keep sandboxes alive for ever. The
session keeps its last good snapshot, which its next turn restores (`status: sandbox_recreated`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("gateway.reaper")


class IdleTracked(Protocol):
    """What the reaper needs of a sandbox provider (the local bubblewrap provider has it)."""

    def sessions(self) -> list[str]: ...

    def last_used(self, session_id: str) -> float | None: ...

    def destroy(self, session_id: str) -> bool: ...


class IdleReaper:
    """Destroys the provider's sessions idle for longer than `idle_seconds`, every `interval` seconds."""

    def __init__(self, provider: Callable[[], object], idle_seconds: float, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 before_destroy: Callable[[str], object] | None = None, max_idle_seconds: float | None = None,
                 on_lost_save: Callable[[str, str], object] | None = None) -> None:
        """`max_idle_seconds`: the ceiling past which a failed save no longer keeps a sandbox (default 4 x idle);
        `on_lost_save(session_id, message)` is told when that happens, so the session's next turn can say so."""
        self._provider = provider
        self._before_destroy = before_destroy
        self._on_lost_save = on_lost_save
        self.idle_seconds = idle_seconds
        self.max_idle_seconds = max(max_idle_seconds or 4 * idle_seconds, idle_seconds)
        # Often enough that a session outlives its timeout by at most a quarter of it (a minute at most).
        self.interval = interval if interval is not None else min(60.0, max(0.5, idle_seconds / 4))
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sandbox-reaper", daemon=True)

    def reap_once(self) -> list[str]:
        """Destroy every idle session now; return their ids."""
        provider = self._provider()
        if not all(hasattr(provider, name) for name in ("sessions", "last_used", "destroy")):
            return []  # a remote sandbox host reaps its own sessions
        tracked: IdleTracked = provider  # type: ignore[assignment]
        now = self._clock()
        reaped = []
        for session_id in tracked.sessions():
            used = tracked.last_used(session_id)
            if used is None or now - used <= self.idle_seconds:
                continue
            if self._before_destroy is not None:
                try:
                    self._before_destroy(session_id)
                except Exception as exc:  # noqa: BLE001 - its files would be lost: keep it until the next pass, or the ceiling
                    if now - used <= self.max_idle_seconds:
                        log.exception("saving the workspace of idle session %s failed; it is kept for now (at most "
                                      "%g s idle: SANDBOX_MAX_IDLE_SECONDS)", session_id, self.max_idle_seconds)
                        continue
                    log.exception("saving the workspace of idle session %s failed again after %.0f s idle, past "
                                  "SANDBOX_MAX_IDLE_SECONDS=%g: it is destroyed; the session keeps its last good snapshot",
                                  session_id, now - used, self.max_idle_seconds)
                    lost = (f"The sandbox was destroyed after {now - used:.0f} s idle (SANDBOX_MAX_IDLE_SECONDS="
                            f"{self.max_idle_seconds:g}) although its workspace could not be saved ({exc}): what changed "
                            "since the last saved snapshot is lost; the workspace was restored from that snapshot.")
                    if self._on_lost_save is not None:
                        self._on_lost_save(session_id, lost)
            if tracked.destroy(session_id):
                log.info("sandbox of session %s destroyed after %.0f s idle (SANDBOX_IDLE_TIMEOUT=%g)",
                         session_id, now - used, self.idle_seconds)
                reaped.append(session_id)
        return reaped

    def start(self) -> IdleReaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reap_once()
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next tick; the gateway lives on
                log.exception("reaping idle sandboxes failed")
