"""The local gateway (`python -m devserver`, as ./scripts/dev runs it) in its own process.

A benchmark measures it from outside, as a client would: in the benchmark's process it would
share the GIL with the client doing the timing.

    with running_gateway(tmp, fake.url) as gateway:
        gateway.url        # http://127.0.0.1:<port>, answering /health
        gateway.proc.pid   # for reading its memory from /proc
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.health import wait_for_health
from tests.support.sandbox_host import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class GatewayProcess:
    """Where the gateway listens, and its process."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]


@contextmanager
def running_gateway(root: str, model_url: str, *, start_timeout: float = 30) -> Iterator[GatewayProcess]:
    """The gateway on a free loopback port, its store and sandboxes under `root`, its model the
    Messages API at `model_url`; yielded once it answers /health, terminated after."""
    port = free_port()
    env = {**os.environ, "DATA_DIR": f"{root}/data", "SANDBOX_ROOT": f"{root}/sb", "ANTHROPIC_API_KEY": "bench",
           "ANTHROPIC_BASE_URL": model_url, "AWS_REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, "-m", "devserver", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, timeout=start_timeout)
        yield GatewayProcess(url, port, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
