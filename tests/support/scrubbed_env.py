"""Environments for running the product as a newcomer would: nothing inherited from the suite.

tests/conftest.py sets AWS_* (fake credentials and a region) for every test, so anything the
product needs that a clean machine lacks would pass unnoticed in-process. End-to-end tests that
start ./scripts/dev, ./scripts/chat or the console run them with `scrubbed_env(...)`: PATH, a
fresh HOME (no ~/.aws, no pip config) and only what the test itself means to set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.sandbox_host import free_port

ROOT = Path(__file__).resolve().parents[2]


def scrubbed_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, a fresh HOME under `home`, and `extra`: nothing else from the test process."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(home), **(extra or {})}


@dataclass
class DevServer:
    """A ./scripts/dev subprocess: its base URL and (after it stops) its whole output."""

    url: str
    proc: subprocess.Popen[str]
    output: str = ""


@contextmanager
def running_scripts_dev(tmp_path: Path, *args: str, extra_env: Mapping[str, str] | None = None,
                        start_timeout: float = 120.0) -> Iterator[DevServer]:
    """Start ./scripts/dev on a free port in a scrubbed environment; stop its process group after.

    The store and the sandboxes live under `tmp_path`; `extra_env` adds what the test means to set.
    """
    port = free_port()
    env = scrubbed_env(tmp_path / "home", {"DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb"),
                                           **(extra_env or {})})
    proc = subprocess.Popen(["./scripts/dev", "--port", str(port), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server = DevServer(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + start_timeout  # a fresh machine installs first
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"./scripts/dev exited with {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
            try:
                httpx.get(server.url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise AssertionError("./scripts/dev did not answer /health in time") from None
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            server.output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            server.output, _ = proc.communicate(timeout=10)
