"""Node scripts of the test suite (tests/node): npm packages installed on first use."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def node_ready() -> None:
    """`npm ci` in tests/node when its packages are missing; skip when node or npm is absent."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Socket.IO client tests (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300,
                       capture_output=True)


def run_scenario(name: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Run one scenario of tests/node/socketio_scenario.mjs and return what it printed."""
    node_ready()
    params = {"timeoutMs": int(timeout * 1000) - 5000, **params}
    done = subprocess.run(["node", "socketio_scenario.mjs", name, json.dumps(params)], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=timeout)
    assert done.stdout.strip(), f"no output; exit {done.returncode}; stderr: {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, f"scenario {name} failed: {json.dumps(result)[-3000:]}\n{done.stderr[-2000:]}"
    return result


def events(result: dict[str, Any], name: str, on: str | None = None) -> list[Any]:
    """The data of every `name` event the scenario received (on one connection, if named)."""
    return [e["data"] for e in result["events"] if e["event"] == name and (on is None or e["on"] == on)]
