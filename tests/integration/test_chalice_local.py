"""`chalice local` serves the REST API too (REST only: it cannot upgrade websockets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.health import wait_for_health
from tests.support.sandbox_host import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_original_example_flow_under_chalice_local(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb")}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("chalice")), "local", "--stage", "dev", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(api, proc, timeout=30)
        up = httpx.post(f"{api}/users/alice/skills", json={"name": "debugging.md", "content": "..."})
        assert up.status_code == 200 and up.json()["key"] == "users/alice/skills/debugging.md"
        assert httpx.get(f"{api}/users/alice/skills").json()["skills"] == ["debugging.md"]
        saved = httpx.post(f"{api}/users/alice/conversations", json={"conversationId": "conv-1", "messages": []})
        assert saved.json()["status"] == "saved"
        assert httpx.get(f"{api}/users/alice/conversations/conv-1").json()["conversationId"] == "conv-1"
        assert (tmp_path / "data/users/alice/skills/debugging.md").read_text() == "..."
    finally:
        proc.terminate()
        proc.wait(timeout=20)
