"""scripts/lib/bootstrap.sh installs only when a requirements file it reads changed, and the
requirements name only extras their packages have (pip warns, and installs nothing, otherwise)."""

from __future__ import annotations

import os
import re
import subprocess
from importlib.metadata import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../calls.log"
"""


def _ensure(repo: Path, req: str) -> list[str]:
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib/bootstrap.sh && ensure_venv {req}"], cwd=repo, check=True,
                   capture_output=True, text=True, timeout=60)
    log = repo / ".venv/calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_test_requirement_change_does_not_reinstall_the_dev_server(tmp_path: Path) -> None:
    (tmp_path / "sandbox_host").mkdir()
    (tmp_path / "requirements.txt").write_text("boto3\n")
    (tmp_path / "requirements-local.txt").write_text("-r requirements.txt\nuvicorn\n")
    (tmp_path / "sandbox_host/requirements.txt").write_text("starlette\n")
    (tmp_path / "requirements-dev.txt").write_text("-r requirements-local.txt\n-r sandbox_host/requirements.txt\npytest\n")
    python = tmp_path / ".venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    os.chmod(python, 0o755)
    assert len(_ensure(tmp_path, "requirements-local.txt")) == 1
    assert len(_ensure(tmp_path, "requirements-dev.txt")) == 2
    assert len(_ensure(tmp_path, "requirements-local.txt")) == 2  # nothing changed
    (tmp_path / "requirements-dev.txt").write_text("-r requirements-local.txt\n-r sandbox_host/requirements.txt\npytest\nplaywright\n")
    assert len(_ensure(tmp_path, "requirements-local.txt")) == 2  # not its file
    assert len(_ensure(tmp_path, "requirements-dev.txt")) == 3
    (tmp_path / "sandbox_host/requirements.txt").write_text("starlette\nuvicorn\n")
    assert len(_ensure(tmp_path, "requirements-local.txt")) == 3  # requirements-local.txt does not include it
    assert len(_ensure(tmp_path, "requirements-dev.txt")) == 4  # requirements-dev.txt does
    (tmp_path / "requirements.txt").write_text("boto3>=1.36\n")
    assert len(_ensure(tmp_path, "requirements-local.txt")) == 5  # an included file changed


def test_every_extra_asked_for_exists() -> None:
    for name in ("requirements.txt", "requirements-local.txt", "requirements-dev.txt", "sandbox_host/requirements.txt"):
        for line in (ROOT / name).read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.-]+)\[([^\]]+)\]", line.strip())
            if not match:
                continue
            provided = set(metadata(match.group(1)).get_all("Provides-Extra") or [])
            missing = {extra.strip() for extra in match.group(2).split(",")} - provided
            assert not missing, f"{name}: {match.group(1)} has no extra {missing}"
