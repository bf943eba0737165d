"""Per-session unprivileged uids, allocated safely across every process on the host.

Each session's commands run as their own uid/gid (equal numbers) from a range no real account
uses, so a session's files and processes belong to nobody else, and RLIMIT_NPROC counts one
sandbox only. Several processes may allocate at once (./scripts/dev and a sandbox host on one
machine, parallel test runs), so the record of who holds which uid is a host-wide folder of
files, one per uid in use, changed only under an exclusive flock of the folder's lock file.
A record names its holder (pid and the pid's start time); a uid whose holder died is taken
back by the next allocation.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chalicelib.sandbox.base import SandboxError

#: Host-wide, so that every server on the machine shares one record.
DEFAULT_UID_DIR = Path("/var/lib/claude-agent-sandbox/uids")
UID_BASE = 200_000
UID_COUNT = 50_000


class UidsExhausted(SandboxError):
    """Every sandbox uid of the range is held by a live session."""


def _start_time(pid: int) -> str | None:
    """When `pid` started (in clock ticks since boot), or None when no live process has it. A
    zombie counts as gone: it holds nothing, and the watcher of leftovers sees a killed server
    in that state first (chalicelib.sandbox.leftovers)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return fields[19]


class UidAllocator:
    """Allocates uids from [base, base + count) with records in `folder` (created 0700)."""

    def __init__(self, folder: Path = DEFAULT_UID_DIR, base: int = UID_BASE, count: int = UID_COUNT) -> None:
        self.folder = folder
        self.base = base
        self.count = count
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        self._me = {"pid": os.getpid(), "start": _start_time(os.getpid())}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _stale(self, record: Path) -> bool:
        try:
            holder = json.loads(record.read_text())
            pid = int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return True
        return _start_time(pid) != holder.get("start")

    def allocate(self, session: str) -> int:
        """A uid no live session on this host holds, recorded for `session`."""
        with self._locked():
            held = {int(p.name) for p in self.folder.iterdir() if p.name.isdigit()}
            for uid in range(self.base, self.base + self.count):
                record = self.folder / str(uid)
                if uid in held:
                    if not self._stale(record):
                        continue
                    record.unlink(missing_ok=True)
                fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as handle:
                    json.dump({**self._me, "session": session}, handle)
                return uid
        raise UidsExhausted(
            f"All {self.count} sandbox uids from {self.base} are in use by live sessions: destroy idle sessions "
            "(DELETE /sandbox/{sessionId}) or wait for the idle reaper."
        )

    def release(self, uid: int) -> None:
        """Give `uid` back (only when this process holds it)."""
        with self._locked():
            record = self.folder / str(uid)
            try:
                holder = json.loads(record.read_text())
            except (OSError, ValueError):
                return
            if holder.get("pid") == self._me["pid"] and holder.get("start") == self._me["start"]:
                record.unlink(missing_ok=True)

    def is_held(self, uid: int) -> bool:
        """Whether a live process holds `uid` (what a crashed run left behind is not held)."""
        record = self.folder / str(uid)
        return record.exists() and not self._stale(record)

    def holder(self, uid: int) -> dict[str, object] | None:
        """The record of `uid`, or None when it is free."""
        try:
            return json.loads((self.folder / str(uid)).read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None
