"""Confining sandbox paths to /workspace, and mapping them to host folders safely.

The server touches workspace files from the host side (much faster than a process per file),
so it must not be tricked by a symlink the sandboxed agent planted: every parent directory is
resolved and checked, and the final component is opened without following links.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from chalicelib.sandbox.base import CLAUDE_DIR, WORKSPACE, SandboxPathError


def relative(path: str) -> str:
    """The path relative to /workspace ('.' for /workspace itself); refuse anything outside."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SandboxPathError(f"Invalid path {path!r}: give a path under {WORKSPACE}.")
    absolute = path if path.startswith("/") else f"{WORKSPACE}/{path}"
    normal = posixpath.normpath(absolute)
    if normal != WORKSPACE and not normal.startswith(WORKSPACE + "/"):
        raise SandboxPathError(f"Path {path!r} is outside {WORKSPACE}: only files under {WORKSPACE} can be used.")
    return posixpath.relpath(normal, WORKSPACE)


def host_path(workspace: Path, path: str, claude_source: Path | None = None, mount_dir: str = CLAUDE_DIR) -> Path:
    """The host file behind a sandbox path, checked to stay inside its folder.

    `claude_source`: the folder seen at `mount_dir` (a bind or s3fs mount), if any.
    """
    rel = relative(path)
    base = workspace
    claude_rel = relative(mount_dir)
    if claude_source is not None and (rel == claude_rel or rel.startswith(claude_rel + "/")):
        base = claude_source
        rel = posixpath.relpath(rel, claude_rel)
    target = base if rel == "." else base.joinpath(*rel.split("/"))
    real_base = os.path.realpath(base)
    real_parent = os.path.realpath(target.parent) if target != base else real_base
    if real_parent != real_base and not real_parent.startswith(real_base + os.sep):
        raise SandboxPathError(f"Path {path!r} leads outside {WORKSPACE} through a symbolic link.")
    if target != base and os.path.islink(target):
        link = os.path.realpath(target)
        if link != real_base and not link.startswith(real_base + os.sep):
            raise SandboxPathError(f"Path {path!r} is a symbolic link pointing outside {WORKSPACE}.")
    return target


def sandbox_path(workspace: Path, host: Path, claude_source: Path | None = None, mount_dir: str = CLAUDE_DIR) -> str:
    """The sandbox path of a host file under the workspace (or the mounted source)."""
    if claude_source is not None:
        try:
            rel = host.relative_to(claude_source)
            return mount_dir if str(rel) == "." else f"{mount_dir}/{rel.as_posix()}"
        except ValueError:
            pass
    rel = host.relative_to(workspace)
    return WORKSPACE if str(rel) == "." else f"{WORKSPACE}/{rel.as_posix()}"
