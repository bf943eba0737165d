"""The workspace snapshot after a turn, and the ones put off until a session's queue empties.

A burst of messages saves the workspace once, at its end: a turn with another message queued
behind it puts its save off, and the runner saves when it finds the queue empty. A turn that
changed nothing in the sandbox (a plain reply: no tool ran, no sandbox was made again) has
nothing to save. A dead runner's repaired turn never saved what it made, so a repair puts a
save off too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from chalicelib.errors import AppError
from chalicelib.realtime.durable import durably
from chalicelib.sandbox.base import Sandbox, SandboxGone
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots

log = logging.getLogger(__name__)


class DeferredSnapshots:
    """Saves sessions' workspaces after turns, now or once their queue is empty."""

    def __init__(self, snapshots: WorkspaceSnapshots | None, sandbox_for: Callable[[str], Sandbox]) -> None:
        self.snapshots = snapshots
        self.sandbox_for = sandbox_for
        # Sessions whose save was put off (another message was queued behind, or a repair).
        self._unsaved: dict[str, str] = {}
        self._lock = threading.Lock()

    def put_off(self, session_id: str, user_id: str) -> None:
        """Save this session's workspace when its queue empties."""
        with self._lock:
            self._unsaved[session_id] = user_id

    def after_turn(self, session_id: str, user_id: str, *, changed: bool, queued_behind: int) -> AppError | Exception | None:
        """The save at the end of a turn: now, put off (`queued_behind`), or none at all when
        the turn changed nothing and no earlier save waits. Returns the failure, if any (the
        turn's result stands; the caller tells the client)."""
        if self.snapshots is None:
            return None
        with self._lock:
            waiting = session_id in self._unsaved
        if not changed and not waiting:
            return None
        if queued_behind > 0:
            self.put_off(session_id, user_id)
            return None
        with self._lock:
            self._unsaved.pop(session_id, None)
        try:
            self._save(session_id, user_id)
        except SandboxGone:
            pass  # the turn never got a sandbox; the last snapshot stands
        except Exception as exc:  # noqa: BLE001 - reported to the caller, who tells the client
            log.exception("saving the workspace of session %s failed", session_id)
            return exc
        return None

    def will_save(self, session_id: str, *, changed: bool, queued_behind: int) -> bool:
        """Whether `after_turn` would write (so the caller confirms its lease first)."""
        with self._lock:
            waiting = session_id in self._unsaved
        return self.snapshots is not None and (changed or waiting) and queued_behind == 0

    def save_put_off(self, session_id: str) -> None:
        """The queue emptied: save what an earlier turn put off."""
        with self._lock:
            user_id = self._unsaved.pop(session_id, None)
        if user_id is None or self.snapshots is None:
            return
        try:
            self._save(session_id, user_id)
        except SandboxGone:
            pass  # nothing live to save; the last snapshot stands
        except Exception:  # noqa: BLE001 - the next turn saves again
            log.exception("saving the workspace of session %s failed", session_id)

    def _save(self, session_id: str, user_id: str) -> None:
        """One save, its storage calls retried through an outage like the turn's other writes."""
        snapshots = self.snapshots
        if snapshots is None:
            return
        sandbox = self.sandbox_for(session_id)
        durably(lambda: snapshots.save(session_id, user_id, sandbox), "saving the workspace snapshot")


def snapshot_failed(failure: Exception) -> dict[str, Any]:
    """The status telling the client the workspace was not saved (the turn's result stands)."""
    reason = failure.message if isinstance(failure, AppError) else f"{type(failure).__name__}: {failure}"
    return {
        "event": "status", "status": "workspace_save_failed",
        "code": failure.code if isinstance(failure, AppError) else "workspace_snapshot_failed",
        "message": f"The workspace could not be saved ({reason}). The last snapshot stands; the workspace "
                   "is saved again after the next turn.",
    }
