"""The local gateway (what ./scripts/dev execs, without its install step) as a test starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.api import ROOT
from tests.support.health import wait_for_health


@contextmanager
def devserver(port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m devserver` in its own process group with exactly `env`; yields once /health
    answers. A process still running on the way out (not killed by the test) is continued, in
    case the test stopped it, and stopped with SIGTERM as ./scripts/dev would be."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "devserver", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc=proc, timeout=60)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
