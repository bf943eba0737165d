"""The agent's persistent bash, driven through its stdin pipe only.

Every command travels down the shell's stdin as one line, `eval` of the command shell-quoted,
with the command's own stdin at /dev/null, so it cannot read the lines meant for the shell.
Nothing is written to a file the sandbox could replace with a symlink: the host never opens a
path the sandbox can write. After each command the shell prints, with builtins only (no fork,
so it still works when the process limit is reached), a marker with the exit code, its cwd and
its exported variables. The server keeps that state in memory: when the shell must be replaced
(a builtin loop past its timeout, the kernel killing it at the memory limit, `exit`), the new
shell gets the same folder and variables back through its stdin.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chalicelib.sandbox.base import ExecResult, SandboxPathError
from chalicelib.sandbox.process import descendants, kill_group

#: Output kept in the server per command: the head the agent sees plus room for the marker.
_HEAD_KEEP = 4 * 1024 * 1024
_TAIL_KEEP = 2 * 1024 * 1024
_MAX_STATE = 1024 * 1024


@dataclass(frozen=True)
class Launch:
    """How to start a process in the sandbox: argv, environment, cwd and the child's setup."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    preexec: Callable[[], None]


class ShellHost(Protocol):
    """What the shell needs from its sandbox."""

    def launch(self, argv: list[str]) -> Launch: ...
    def check_alive(self) -> None: ...
    def after_command(self, before: object, output: bytes) -> tuple[str, bool]: ...
    def before_command(self) -> object: ...


class BashSession:
    """A persistent bash inside the sandbox: cwd and exported variables carry over."""

    def __init__(self, host: ShellHost, default_timeout: float) -> None:
        self.host = host
        self.default_timeout = default_timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()
        self._dropped = 0
        self._cond = threading.Condition()
        self._state = ""  # the last `cd ...; declare -x ...` the shell reported
        self._start()

    # -- process -------------------------------------------------------------------------

    def _start(self) -> None:
        launch = self.host.launch(["/bin/bash", "--noprofile", "--norc", "-s"])
        with self._cond:
            self._buffer = bytearray()
            self._dropped = 0
        self._proc = subprocess.Popen(
            launch.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=launch.env, cwd=launch.cwd, start_new_session=True,
            preexec_fn=launch.preexec,  # noqa: PLW1509 - cgroup, rlimits, mount namespace, uid: only a child can
        )
        threading.Thread(target=self._read, args=(self._proc,), daemon=True).start()
        if self._state:
            self._send(f"{{ {self._state}\n}} >/dev/null 2>&1\n")

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                if proc is self._proc:
                    self._buffer += chunk
                    if len(self._buffer) > _HEAD_KEEP + 2 * _TAIL_KEEP:
                        # A command printing gigabytes must not fill the server: keep the head
                        # (what the agent sees) and the tail (where the marker comes).
                        cut = len(self._buffer) - _HEAD_KEEP - _TAIL_KEEP
                        del self._buffer[_HEAD_KEEP:_HEAD_KEEP + cut]
                        self._dropped += cut
                self._cond.notify_all()

    def _send(self, text: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(text.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the shell died: the wait below sees it

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- commands ------------------------------------------------------------------------

    def run(self, command: str, *, timeout: float | None = None, max_output: int = 30_000) -> ExecResult:
        """Run one command in the shell; kill it at `timeout`, keeping the session."""
        if "\x00" in command:
            raise SandboxPathError("The command contains a NUL byte, which bash cannot run: remove it.")
        timeout = timeout or self.default_timeout
        with self._lock:
            self.host.check_alive()
            if not self._alive():
                self.close()
                self._start()
            before = self.host.before_command()
            marker = f"__SANDBOX_DONE_{uuid.uuid4().hex}__"
            started = time.monotonic()
            with self._cond:
                self._buffer = bytearray()
                self._dropped = 0
            self._send(
                f"eval {shlex.quote(command)} < /dev/null 2>&1; __rc=$?; "
                f"printf '\\n%s %d\\n' {marker} \"$__rc\"; printf 'cd -- %q\\n' \"$PWD\"; export -p; "
                f"printf '%s\\n' {marker}_END\n"
            )
            output, code, state = self._wait(marker, started + timeout)
            notes: list[str] = []
            timed_out = False
            if code is None and self._alive():
                timed_out = True
                self._kill_command()
                output, code, state = self._wait(marker, time.monotonic() + 3)
                if code is None:
                    # A builtin loop holds the shell itself: replace it (cwd and variables kept).
                    self.close()
                    self._start()
                code = 124
                notes.append(f"[killed after {timeout:g}s timeout; the shell session and its cwd are kept]")
            elif code is None:
                returned = self._proc.returncode if self._proc is not None else None
                code = 128 + -returned if returned is not None and returned < 0 else (returned or 137)
                self.close()
                notes.append("[the shell ended (exit or killed); a new one starts at the next command, in the same folder "
                             "with the same exported variables]")
            if state is not None and len(state) <= _MAX_STATE:
                self._state = state
            note, clean_up = self.host.after_command(before, output)
            if note:
                notes.append(note)
            if clean_up and self._alive() and not self._kill_command():
                # Still respawning (a fork bomb at its limit): replace the shell, which takes the
                # whole pid namespace with it; cwd and variables come back.
                self.close()
                self._start()
            truncated = len(output) > max_output or self._dropped > 0
            text = output[:max_output].decode("utf-8", "replace")
            if notes:
                text += "\n" + "\n".join(notes)
            return ExecResult(
                exit_code=code, stdout=text, stderr="", stdout_truncated=truncated, timed_out=timed_out,
                duration_ms=int((time.monotonic() - started) * 1000),
            )

    def _wait(self, marker: str, deadline: float) -> tuple[bytes, int | None, str | None]:
        start = ("\n" + marker + " ").encode()
        end = ("\n" + marker + "_END\n").encode()
        with self._cond:
            while True:
                index = self._buffer.find(start)
                if index >= 0:
                    stop = self._buffer.find(end, index)
                    if stop >= 0:
                        line_end = self._buffer.find(b"\n", index + len(start))
                        code = int(self._buffer[index + len(start):line_end])
                        state = self._buffer[line_end + 1:stop + 1].decode("utf-8", "replace")
                        return bytes(self._buffer[:index]), code, state
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._proc is None or self._proc.poll() is not None:
                    if self._proc is not None and self._proc.poll() is not None:
                        # Gone: read what it printed last before reporting.
                        self._cond.wait(0.05)
                    return bytes(self._buffer), None, None
                self._cond.wait(min(remaining, 0.5))

    def _kill_command(self) -> bool:
        """Kill every process of the sandbox but the shell: the command, its children, and
        whatever it left running in the background (orphans go to the sandbox's init).
        Return whether none is left."""
        if self._proc is None:
            return True
        for _ in range(20):
            if _comm(self._proc.pid) == "bash":  # unisolated: the shell is our child itself
                victims = descendants(self._proc.pid)
            else:
                tree = descendants(self._proc.pid)
                shell = next((pid for pid in tree if _comm(pid) == "bash"), None)
                if shell is None:
                    return True
                init = _ppid(shell)
                victims = [pid for pid in descendants(init) if pid != shell] if init in tree else descendants(shell)
            if not victims:
                return True
            for pid in reversed(victims):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.02)
        return False

    def restart(self) -> None:
        """A fresh shell: cwd back to /workspace, exported variables forgotten."""
        with self._lock:
            self.close()
            self._state = ""
            self._start()

    def close(self) -> None:
        """Kill the shell and everything in its sandbox (its pid namespace goes with it)."""
        if self._proc is not None:
            kill_group(self._proc)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            self._proc = None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
