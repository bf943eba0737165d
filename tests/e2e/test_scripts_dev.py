"""The README's first command: ./scripts/dev serves the product on its embedded defaults, on a
machine with no AWS configuration (the subprocess gets PATH, a fresh HOME and what we set)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.scrubbed_env import running_scripts_dev

pytestmark = pytest.mark.slow


def test_scripts_dev_serves_rest_and_websocket(tmp_path: Path) -> None:
    with running_scripts_dev(tmp_path) as dev:
        api = dev.url
        health = httpx.get(api + "/health", timeout=5).json()
        assert health["storage"] == "local" and health["hasR2"] is False
        assert httpx.post(f"{api}/users/alice/skills", json={"name": "debugging.md", "content": "..."}).status_code == 200
        setup = httpx.post(f"{api}/setup/session-1?userId=alice").json()
        assert setup["setupMethod"] == "r2_load_dev" and setup["websocketUrl"] == f"{api.replace('http', 'ws')}/ws?sessionId=session-1"
        assert (tmp_path / "data/users/alice/skills/debugging.md").exists()
        # No AWS region anywhere in this environment: the websocket must still open and send.
        with connect(f"{setup['websocketUrl']}&token={setup['token']}") as ws:  # the client offers permessage-deflate
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # API Gateway accepts none
            ws.send('{"action": "get_history"}')
            assert json.loads(ws.recv(timeout=10))["event"] == "history"  # sent through /@connections
    output = dev.output
    assert "API_KEY is not set" in output and "Traceback" not in output
    assert "user tokens: set USER_TOKEN_SECRET" in output and "/users/<userId>/tokens" in output
    assert '"GET /health HTTP/1.1" 200' in output and "connections/" not in output  # one line per frame would drown the log


def test_production_banner_and_health_tell_the_truth(tmp_path: Path) -> None:
    # Plain S3 (an endpoint, no credentials) and no API_KEY: the product refuses every request.
    env = {"ENVIRONMENT": "production", "S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    with running_scripts_dev(tmp_path, extra_env=env) as dev:
        health = httpx.get(dev.url + "/health").json()
        refused = httpx.get(dev.url + "/users/alice/skills")
    assert health["storage"] == "s3" and health["hasR2"] is False
    assert refused.status_code == 500 and refused.json()["code"] == "api_key_not_configured"
    assert "every endpoint is open" not in dev.output
    assert "ENVIRONMENT=production and API_KEY is not set: every request but /health is refused" in dev.output


def test_scripts_dev_reaps_idle_sandboxes(tmp_path: Path) -> None:
    with running_scripts_dev(tmp_path, extra_env={"SANDBOX_IDLE_TIMEOUT": "1"}) as dev:
        for n in range(3):
            assert httpx.post(f"{dev.url}/setup/idle-{n}?userId=alice").status_code == 200
        assert (tmp_path / "sb/idle-0").exists()
        deadline = time.monotonic() + 30
        while any((tmp_path / f"sb/idle-{n}").exists() for n in range(3)):
            assert time.monotonic() < deadline, "idle sandboxes were not reaped"
            time.sleep(0.2)
    assert dev.output.count("destroyed after") == 3 and "SANDBOX_IDLE_TIMEOUT=1" in dev.output


def test_stopping_scripts_dev_gives_its_sandboxes_back(tmp_path: Path) -> None:
    """SIGTERM (what `kill`, systemd and the tests send) ends ./scripts/dev like Ctrl-C: the
    sandboxes' tmpfs workspaces are unmounted and their folders removed."""
    with running_scripts_dev(tmp_path) as dev:
        for session in ("stop-1", "stop-2"):
            assert httpx.post(f"{dev.url}/setup/{session}?userId=alice", timeout=30).status_code == 200
        mounted = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path / "sb") in line]
        assert len(mounted) == 2, mounted  # one workspace each, while it runs
    assert dev.proc.returncode == 128 + signal.SIGTERM, dev.output
    left = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path / "sb") in line]
    assert left == [], left
    assert not (tmp_path / "sb" / "stop-1").exists() and not (tmp_path / "sb" / "stop-2").exists()
