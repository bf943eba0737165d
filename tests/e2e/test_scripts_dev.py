"""The README's first command: ./scripts/dev serves the product on its embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.sandbox_host import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_scripts_dev_serves_rest_and_websocket(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_GATEWAY_URL", "DATA_DIR")}
    env |= {"DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb")}
    proc = subprocess.Popen(["./scripts/dev", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    api = f"http://127.0.0.1:{port}"
    try:
        health = None
        for _ in range(600):  # a fresh machine installs first: allow up to a minute
            try:
                health = httpx.get(api + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health is not None and health.json()["storage"] == "local"
        assert httpx.post(f"{api}/users/alice/skills", json={"name": "debugging.md", "content": "..."}).status_code == 200
        setup = httpx.post(f"{api}/setup/session-1?userId=alice").json()
        assert setup["setupMethod"] == "r2_load_dev" and setup["websocketUrl"] == f"ws://127.0.0.1:{port}/ws?sessionId=session-1"
        assert (tmp_path / "data/users/alice/skills/debugging.md").exists()
        with connect(f"{setup['websocketUrl']}&token={setup['token']}") as ws:  # the client offers permessage-deflate
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # API Gateway accepts none
            ws.send('{"action": "get_history"}')
            assert json.loads(ws.recv(timeout=10))["event"] == "history"  # sent through /@connections
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert "API_KEY is not set" in output
    assert '"GET /health HTTP/1.1" 200' in output and "connections/" not in output  # one line per frame would drown the log
