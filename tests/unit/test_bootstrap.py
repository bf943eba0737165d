"""scripts/lib/bootstrap.sh installs a lock only when it changed, exactly as pinned (hashes, no
dependency resolution), and checks the result; the ranges name only extras their packages have
(pip warns, and installs nothing, otherwise)."""

from __future__ import annotations

import os
import re
import subprocess
from importlib.metadata import metadata
from pathlib import Path

from scripts.deps import LOCK_SETS

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../calls.log"
"""


def _installs(repo: Path, lock: str) -> list[str]:
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib/bootstrap.sh && ensure_venv {lock}"], cwd=repo, check=True,
                   capture_output=True, text=True, timeout=60)
    log = repo / ".venv/calls.log"
    return [line for line in (log.read_text().splitlines() if log.exists() else []) if " install " in f" {line} "]


def test_a_lock_is_installed_exactly_and_only_when_it_changed(tmp_path: Path) -> None:
    (tmp_path / "requirements-local.txt").write_text("boto3==1.44.18 --hash=sha256:00\n")
    (tmp_path / "requirements-dev.txt").write_text("boto3==1.44.18 --hash=sha256:00\npytest==9.2.0 --hash=sha256:11\n")
    python = tmp_path / ".venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    os.chmod(python, 0o755)
    assert _installs(tmp_path, "requirements-local.txt") == [
        "-m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-local.txt"]
    assert len(_installs(tmp_path, "requirements-dev.txt")) == 2
    assert len(_installs(tmp_path, "requirements-local.txt")) == 2  # nothing changed
    (tmp_path / "requirements-dev.txt").write_text("boto3==1.44.18 --hash=sha256:00\npytest==9.2.1 --hash=sha256:22\n")
    assert len(_installs(tmp_path, "requirements-local.txt")) == 2  # not its lock
    assert len(_installs(tmp_path, "requirements-dev.txt")) == 3
    calls = (tmp_path / ".venv/calls.log").read_text()
    assert "-m scripts.deps prune requirements-dev.txt" in calls and "-m pip check" in calls


def test_every_extra_asked_for_exists() -> None:
    for name in (lock_set.source for lock_set in LOCK_SETS):
        for line in (ROOT / name).read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.-]+)\[([^\]]+)\]", line.strip())
            if not match:
                continue
            provided = set(metadata(match.group(1)).get_all("Provides-Extra") or [])
            missing = {extra.strip() for extra in match.group(2).split(",")} - provided
            assert not missing, f"{name}: {match.group(1)} has no extra {missing}"
