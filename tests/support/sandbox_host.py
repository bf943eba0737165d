"""Running the sandbox host on loopback for a test."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from chalicelib.config import Settings
from tests.support.health import wait_for_health


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: object, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def running_sandbox_host(root: Path, **env: str) -> Iterator[tuple[str, str]]:
    """The sandbox host on loopback; yields (url, token)."""
    from sandbox_host.server import create_app

    token = secrets.token_urlsafe(16)
    settings = Settings.from_env({"SANDBOX_ROOT": str(root), "SANDBOX_TOKEN": token, **env})
    with serve(create_app(settings)) as url:
        assert httpx.get(url + "/health").status_code == 200
        yield url, token


class HostProcess:
    """`python -m sandbox_host` as its own process (so a test can SIGKILL it, as a host dies)."""

    def __init__(self, port: int, root: Path, token: str, *, stdout: Path | None = None, **env: str) -> None:
        self.port, self.root, self.token, self.env = port, root, token, env
        # Where the host's stdout (its metrics lines) goes; discarded when None.
        self.stdout = stdout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostProcess:
        env = {**os.environ, "SANDBOX_TOKEN": self.token, "PORT": str(self.port), "SANDBOX_HOST_BIND": "127.0.0.1",
               "SANDBOX_ROOT": str(self.root), **self.env}
        root = Path(__file__).resolve().parents[2]
        with open(self.stdout, "ab") if self.stdout is not None else open(os.devnull, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "sandbox_host"], cwd=root, env=env,
                                         stdout=out, stderr=subprocess.DEVNULL)
        wait_for_health(self.url, self.proc, timeout=30)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when a machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None

    def release_mounts(self) -> None:
        """Detach the workspace tmpfs mounts a SIGKILLed host left under its root (a dead
        machine's memory): its disk can then be deleted, and the test leaves no mount behind."""
        from chalicelib.sandbox import linux

        root = str(self.root.resolve())
        with open("/proc/self/mounts") as table:
            targets = [line.split()[1] for line in table if line.split()[1].startswith(root + "/")]
        for target in sorted(targets, key=len, reverse=True):
            linux.umount_lazy(target)

    def lose_disk(self) -> None:
        """The host's disk is gone (a new machine): every session folder deleted."""
        self.release_mounts()
        shutil.rmtree(self.root)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10, **kwargs)
