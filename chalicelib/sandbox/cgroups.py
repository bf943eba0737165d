"""Whole-sandbox process and memory limits with cgroups (v2, or v1 where that is mounted).

Each session gets its own cgroup below this server's own (so the host's limits on the server
still hold); its processes join it before bwrap starts, and every process they fork stays in
it: `pids.max` bounds the number of processes, the memory limit the memory of all of them
together (the tmpfs pages they write included), swap included where the kernel accounts it.
The sandbox cannot leave or change it: its files belong to root, and the sandbox runs as an
unprivileged uid in its own cgroup namespace.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP = "claude-agent-sandboxes"


@dataclass(frozen=True)
class Counters:
    """How often the limits were hit so far (to tell the agent which one stopped its command)."""

    pids_max: int = 0
    oom_kills: int = 0


def _read_key(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path in the hierarchy of `controller` (None: the v2 one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller is None and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return None


def _v2_mount(root: Path) -> Path | None:
    if (root / "cgroup.controllers").exists():
        return root
    if (root / "unified" / "cgroup.controllers").exists():
        return root / "unified"
    return None


class SessionCgroup:
    """One session's cgroup(s): v2 has one folder, v1 one per controller (pids, memory)."""

    def __init__(self, version: Literal["v1", "v2"], pids_dir: Path, memory_dir: Path) -> None:
        self.version = version
        self.pids_dir = pids_dir
        self.memory_dir = memory_dir

    def dirs(self) -> list[Path]:
        return [self.pids_dir] if self.pids_dir == self.memory_dir else [self.pids_dir, self.memory_dir]

    def join(self) -> None:
        """Move the calling process into the cgroup (called in the child, before exec)."""
        pid = str(os.getpid()).encode()
        for folder in self.dirs():
            fd = os.open(folder / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def counters(self) -> Counters:
        oom = self.memory_dir / ("memory.events" if self.version == "v2" else "memory.oom_control")
        return Counters(pids_max=_read_key(self.pids_dir / "pids.events", "max"), oom_kills=_read_key(oom, "oom_kill"))

    def processes(self) -> list[int]:
        try:
            return [int(p) for p in (self.pids_dir / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self, deadline: float = 5.0) -> None:
        """SIGKILL every process in the cgroup until it is empty (bounded by `deadline` seconds)."""
        if self.version == "v2" and (self.pids_dir / "cgroup.kill").exists():
            try:
                (self.pids_dir / "cgroup.kill").write_text("1")
            except OSError:
                pass
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            pids = self.processes()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left and remove the cgroup folders."""
        self.kill_all()
        for folder in self.dirs():
            end = time.monotonic() + 5
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY until the killed processes are reaped.
                    if exc.errno != errno.EBUSY or time.monotonic() > end:
                        log.warning("could not remove cgroup %s: %s", folder, exc)
                        break
                    time.sleep(0.05)


class Cgroups:
    """What this host offers: cgroup v2, v1, or nothing usable (then `version` is None)."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.version: Literal["v1", "v2"] | None = None
        self.reason = ""
        self._pids_parent: Path | None = None
        self._memory_parent: Path | None = None
        try:
            if not self._setup_v2() and not self._setup_v1():
                self.reason = self.reason or "no writable cgroup hierarchy with the pids and memory controllers"
        except OSError as exc:
            self.version = None
            self.reason = f"cgroups are not writable here ({exc.strerror or exc})"
        if self.version is None:
            log.warning("sandbox limits without cgroups: %s; RLIMIT_NPROC and RLIMIT_AS apply instead", self.reason)

    def _setup_v2(self) -> bool:
        mount = _v2_mount(self.root)
        own = _own_cgroup(None)
        if mount is None or own is None:
            return False
        base = mount / own.lstrip("/")
        available = set((base / "cgroup.controllers").read_text().split()) if (base / "cgroup.controllers").exists() else set()
        if not {"pids", "memory"} <= available:
            self.reason = f"cgroup v2 at {mount} does not delegate pids and memory to {own}"
            return False
        if not self._enable_v2(base):
            # No internal processes: a cgroup with members cannot hand controllers to children.
            # Move this server's processes into a leaf of their own, then try again.
            leaf = base / "server"
            leaf.mkdir(exist_ok=True)
            for pid in (base / "cgroup.procs").read_text().split():
                try:
                    (leaf / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            if not self._enable_v2(base):
                self.reason = f"cannot enable the pids and memory controllers in {base}"
                return False
        parent = base / GROUP
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text("+pids +memory")
        self.version, self._pids_parent, self._memory_parent = "v2", parent, parent
        return True

    @staticmethod
    def _enable_v2(base: Path) -> bool:
        try:
            (base / "cgroup.subtree_control").write_text("+pids +memory")
            return True
        except OSError:
            return False

    def _setup_v1(self) -> bool:
        parents: list[Path] = []
        for controller in ("pids", "memory"):
            mount = self.root / controller
            own = _own_cgroup(controller)
            if not (mount / "cgroup.procs").exists() or own is None:
                return False
            parent = mount / own.lstrip("/") / GROUP
            parent.mkdir(exist_ok=True)
            parents.append(parent)
        self.version, self._pids_parent, self._memory_parent = "v1", parents[0], parents[1]
        return True

    def sweep(self, in_use: Callable[[str], bool]) -> int:
        """Remove the session cgroups a crashed run left (those `in_use(name)` rejects); return how many."""
        if self.version is None or self._pids_parent is None or self._memory_parent is None:
            return 0
        removed = 0
        for parent in {self._pids_parent, self._memory_parent}:
            for folder in parent.iterdir():
                if folder.is_dir() and not in_use(folder.name):
                    SessionCgroup(self.version, folder, folder).remove()
                    removed += 1
        return removed

    def create(self, name: str, *, pids: int, memory_bytes: int) -> SessionCgroup | None:
        """A fresh cgroup for one session with its limits, or None without cgroups."""
        if self.version is None or self._pids_parent is None or self._memory_parent is None:
            return None
        group = SessionCgroup(self.version, self._pids_parent / name, self._memory_parent / name)
        for folder in group.dirs():
            if folder.exists():
                SessionCgroup(self.version, folder, folder).remove()  # left by a crashed run
            folder.mkdir()
        (group.pids_dir / "pids.max").write_text(str(pids))
        if self.version == "v2":
            (group.memory_dir / "memory.max").write_text(str(memory_bytes))
            if (group.memory_dir / "memory.swap.max").exists():
                (group.memory_dir / "memory.swap.max").write_text("0")
        else:
            (group.memory_dir / "memory.limit_in_bytes").write_text(str(memory_bytes))
            swap = group.memory_dir / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(memory_bytes))  # memory + swap: no escape into swap
        return group
