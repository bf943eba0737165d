"""A tiny filesystem for the full-disk tests: a tmpfs mounted for one test, and a filler file.

Mounting needs root (the suite runs as root in CI); elsewhere the tests that need it skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's syntax: "2m") at `path` for the block; unmount after."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(data: Path, leave: int) -> Path:
    """Take all but `leave` bytes of the filesystem holding `data`; returns the filler file."""
    stat = os.statvfs(data)
    filler = data / "filler.bin"
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler
