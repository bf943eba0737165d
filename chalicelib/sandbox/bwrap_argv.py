"""The bubblewrap command line of a sandboxed command, built by a pure function.

Everything it depends on is in its arguments: what the host's root looks like (`HostLayout`,
read once per provider) and what this launch needs (`LaunchPlan`). So the argv is testable
line by line without a sandbox, and what makes a sandbox (`bwrap.py`) stays apart from what
it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chalicelib.sandbox.base import MOUNT_DIR, WORKSPACE

# Only what programs need from /etc; /etc/shadow and friends stay out.
ETC_FILES = (
    "passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "localtime", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates", "alternatives", "mime.types", "bash.bashrc",
    "inputrc", "profile", "python3", "python3.11",
)
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class HostLayout:
    """The parts of the host's root a sandbox sees: top-level links into /usr (merged-usr
    systems), top-level folders bound read-only, and the /etc entries present."""

    links: tuple[tuple[str, str], ...]
    folders: tuple[str, ...]
    etc: tuple[str, ...]

    @classmethod
    def read(cls, root: Path = Path("/")) -> HostLayout:
        """What this host has (looked at once, when the provider starts)."""
        links, folders = [], []
        for name in MERGED_USR:
            source = root / name
            if source.is_symlink():
                links.append((name, os.readlink(source)))
            elif source.is_dir():
                folders.append(name)
        etc = tuple(name for name in ETC_FILES if (root / "etc" / name).exists())
        return cls(tuple(links), tuple(folders), etc)


@dataclass(frozen=True)
class LaunchPlan:
    """One launch: where its workspace and skills are bound from, and what it may do."""

    bwrap: str
    layout: HostLayout
    workspace_source: str
    skills_source: str | None
    tmp_bytes: int
    environment: Mapping[str, str]
    # True: keep the network namespace the pre-exec step joined (the egress proxy's); False: none.
    network: bool
    disable_userns: bool


def bwrap_argv(plan: LaunchPlan, argv: list[str]) -> list[str]:
    """The full argv that runs `argv` under bubblewrap as `plan` says."""
    # By full path: the sandboxed environment is empty, so the child's PATH cannot find it.
    # --unshare-user: bwrap runs as the session's uid (or the server's, unprivileged), never
    # as root; --cap-drop ALL also drops what it holds inside its user namespace.
    cmd = [plan.bwrap, "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if plan.disable_userns:
        cmd.append("--disable-userns")  # no nested user namespaces: no fresh capabilities inside
    cmd += ["--ro-bind", "/usr", "/usr"]
    for name, target in plan.layout.links:
        cmd += ["--symlink", target, f"/{name}"]
    for name in plan.layout.folders:
        cmd += ["--ro-bind", f"/{name}", f"/{name}"]
    for name in plan.layout.etc:
        cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    size = str(plan.tmp_bytes)
    # /dev is a tmpfs bwrap fills with the few safe devices: read-only once made, with a
    # size-limited /dev/shm, so /workspace, /tmp and /dev/shm are the only writable places.
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
            "--size", size, "--tmpfs", "/tmp", "--bind", plan.workspace_source, WORKSPACE]
    if plan.skills_source is not None:
        cmd += ["--bind", plan.skills_source, MOUNT_DIR]
    if not plan.network:
        cmd.append("--unshare-net")
    # bwrap builds the root on a tmpfs; make it read-only so only the binds above are writable.
    cmd += ["--remount-ro", "/", "--clearenv", "--chdir", WORKSPACE]
    for key, value in plan.environment.items():
        cmd += ["--setenv", key, value]
    return cmd + ["--", *argv]
