"""Running the sandbox host on loopback for a test."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from chalicelib.config import Settings


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
