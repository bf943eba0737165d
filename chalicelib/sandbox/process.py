"""Running a process with a timeout and capped output, without deadlocks.

Both pipes are drained on threads while the process runs, keeping the first `max_output`
bytes of each and counting the rest, so a command that prints gigabytes neither blocks nor
fills the server's memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from chalicelib.sandbox.base import ExecResult


class _Capped:
    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0
        self.thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self.thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        while True:
            chunk = stream.read(65536)
            if not chunk:
                return
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def run_capped(
    argv: Sequence[str],
    *,
    timeout: float,
    max_output: int,
    env: dict[str, str],
    cwd: str | None = None,
    preexec: Callable[[], None] | None = None,
) -> ExecResult:
    """Run `argv`; kill its whole process group at `timeout` (exit code 124, timed_out)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own process group, so the kill reaches every child
        preexec_fn=preexec,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Capped(proc.stdout, max_output), _Capped(proc.stderr, max_output)
    timed_out = False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        code = proc.wait(timeout=10)
    out.thread.join(timeout=5)
    err.thread.join(timeout=5)
    return ExecResult(
        exit_code=124 if timed_out else code,
        stdout=out.text(),
        stderr=err.text() + (f"\n[killed after {timeout:g}s timeout]" if timed_out else ""),
        stdout_truncated=out.dropped > 0,
        stderr_truncated=err.dropped > 0,
        timed_out=timed_out,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of `proc` (ignoring one that is already gone)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> list[int]:
    """Every descendant pid of `pid`, children first (from /proc)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    children = [int(c) for c in handle.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            found.extend(children)
            stack.extend(children)
    return found
