"""The sandbox host image's entry point, run as the image runs it (without Docker)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.health import wait_for_health
from tests.support.sandbox_host import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_dockerfile_copies_what_exists_and_runs_the_module() -> None:
    dockerfile = (ROOT / "sandbox_host/Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), source
    assert 'CMD ["python", "-m", "sandbox_host"]' in dockerfile
    assert "bubblewrap" in dockerfile and "s3fs" in dockerfile


def test_python_m_sandbox_host_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SANDBOX_TOKEN": "entry-token", "PORT": str(port), "SANDBOX_HOST_BIND": "127.0.0.1",
           "SANDBOX_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "sandbox_host"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, timeout=30)
        auth = {"Authorization": "Bearer entry-token"}
        assert httpx.post(url + "/sessions/e1", json={}, headers=auth).status_code == 200
        result = httpx.post(url + "/sessions/e1/exec", json={"command": "echo alive; pwd"}, headers=auth).json()
        assert result["stdout"] == "alive\n/workspace\n"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # Stopped by SIGTERM (`docker stop`), it gives its sessions back: no workspace stays mounted.
    assert proc.returncode == 128 + signal.SIGTERM
    assert [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path) in line] == []


def test_refuses_to_start_without_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_TOKEN"} | {"SANDBOX_ROOT": str(tmp_path), "PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "sandbox_host"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SANDBOX_TOKEN is not set" in result.stderr


def test_refuses_to_start_where_bwrap_cannot_create_namespaces(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    env = {**os.environ, "SANDBOX_TOKEN": "t", "SANDBOX_ROOT": str(tmp_path / "sb"), "PORT": str(free_port()),
           "PATH": f"{fake}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "sandbox_host"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "The sandbox host cannot start: bubblewrap is installed but cannot create a sandbox here" in result.stderr
    assert "CAP_SYS_ADMIN" in result.stderr
