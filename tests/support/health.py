"""Waiting for a server started as a subprocess to answer GET /health."""

from __future__ import annotations

import shlex
import subprocess
import time

import httpx


def wait_for_health(url: str, proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> None:
    """Poll `url`/health until it answers 200; raise if `proc` exits first or `timeout` seconds pass.

    A server that died or never came up is named here with its command, rather than surfacing
    later as a connection error in whatever request follows.
    """
    command = shlex.join(str(arg) for arg in proc.args) if isinstance(proc.args, list) else str(proc.args)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"`{command}` exited with code {proc.returncode} before answering {url}/health: "
                               "run it by hand to see why")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"`{command}` did not answer {url}/health with 200 within {timeout:g} s")
        time.sleep(0.1)
