"""A session's sandbox as a turn uses it: one that vanished mid-turn is recreated, once per call.

A sandbox can go away under a running session (the host's idle reaper, a host restart, its
folder deleted). Every later tool call would fail; instead the first call that finds it gone
has a new sandbox made, with the skills loaded again (the runner tells the client
`sandbox_recreated`), and is then retried. Only calls that failed before running are retried:
SandboxGone is raised when the sandbox is found missing, not halfway through a command.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chalicelib.errors import AppError
from chalicelib.sandbox.base import (
    WORKSPACE,
    BashSession,
    ExecResult,
    FileEntry,
    MountSpec,
    Sandbox,
    SandboxError,
    SandboxGone,
)

if TYPE_CHECKING:
    from chalicelib.services.sessions import SessionsService


def open_sandbox(sessions: SessionsService, session_id: str, user_id: str,
                 emit: Callable[[dict[str, Any]], object]) -> RecoveringSandbox:
    """The session's sandbox for a turn (a fresh one, skills loaded again, if it went away),
    made again on the first call that finds it gone; `emit` tells the client when it was."""

    def recreate() -> Sandbox:
        reloaded = sessions.reload_skills(session_id, user_id)
        emit({
            "event": "status", "status": "sandbox_recreated",
            "message": "The sandbox had gone away (idle timeout, host restart, its folder deleted or a move to "
            "another host); a new one was prepared, its files were restored from the last snapshot and the "
            "skills were loaded again.",
            "skillsLoaded": reloaded.skills,
        })
        if reloaded.not_restored is not None:
            emit({"event": "status", "status": "workspace_not_restored", "message": reloaded.not_restored})
        if reloaded.lost_save is not None:
            emit({"event": "status", "status": "workspace_save_failed", "code": "workspace_not_saved_before_reaping",
                  "message": reloaded.lost_save})
        return sessions.sandbox_for(session_id)

    try:
        current = sessions.sandbox_for(session_id)
    except SandboxGone:
        current = recreate()
    except SandboxError as exc:
        raise AppError(f"The sandbox is unavailable: {exc}. Retry shortly.", code="sandbox_unavailable") from exc
    return RecoveringSandbox(current, recreate)


class RecoveringSandbox:
    """Delegates to the session's sandbox; on SandboxGone, recreates it and retries the call."""

    def __init__(self, sandbox: Sandbox, recreate: Callable[[], Sandbox]) -> None:
        self._sandbox = sandbox
        self._recreate = recreate
        self._lock = threading.Lock()
        self.session_id = sandbox.session_id
        # Whether anything may have changed the workspace (a write, a delete, a command, a new
        # sandbox): a turn that only read (a plain reply, the skill listing) has nothing to save.
        self.changed = False

    def _changing(self, call: Callable[[Sandbox], Any]) -> Any:
        self.changed = True
        return self._retrying(call)

    def _retrying(self, call: Callable[[Sandbox], Any]) -> Any:
        current = self._sandbox
        try:
            return call(current)
        except SandboxGone:
            with self._lock:
                if self._sandbox is current:  # a parallel call may have recreated it already
                    self.changed = True
                    self._sandbox = self._recreate()
                replacement = self._sandbox
        return call(replacement)

    def write_file(self, path: str, content: bytes | str) -> None:
        self._changing(lambda s: s.write_file(path, content))

    def write_files(self, files: dict[str, bytes | str]) -> None:
        self._changing(lambda s: s.write_files(files))

    def read_file(self, path: str) -> bytes:
        return self._retrying(lambda s: s.read_file(path))  # type: ignore[no-any-return]

    def list_files(self, path: str = WORKSPACE, *, recursive: bool = True) -> list[FileEntry]:
        return self._retrying(lambda s: s.list_files(path, recursive=recursive))  # type: ignore[no-any-return]

    def delete_file(self, path: str) -> None:
        self._changing(lambda s: s.delete_file(path))

    def exec(self, command: str, *, timeout: float | None = None, max_output: int = 100_000) -> ExecResult:
        return self._changing(lambda s: s.exec(command, timeout=timeout, max_output=max_output))  # type: ignore[no-any-return]

    def bash(self) -> BashSession:
        return _RecoveringBash(self)

    def mount_bucket(self, spec: MountSpec) -> list[str]:
        return self._changing(lambda s: s.mount_bucket(spec))  # type: ignore[no-any-return]

    def destroy(self) -> None:
        self._sandbox.destroy()


class _RecoveringBash:
    """The persistent shell of whichever sandbox is current."""

    def __init__(self, owner: RecoveringSandbox) -> None:
        self.owner = owner

    def run(self, command: str, *, timeout: float | None = None, max_output: int = 30_000) -> ExecResult:
        return self.owner._changing(  # type: ignore[no-any-return]
            lambda s: s.bash().run(command, timeout=timeout, max_output=max_output)
        )

    def restart(self) -> None:
        self.owner._changing(lambda s: s.bash().restart())
