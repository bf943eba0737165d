"""The local gateway on loopback, serving the real app, for end-to-end tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from websockets.sync.client import ClientConnection

from tests.support.api import ROOT
from tests.support.sandbox_host import free_port, serve


@contextmanager
def running_gateway() -> Iterator[str]:
    """./scripts/dev's gateway in this process; yields its base URL. LOCAL_GATEWAY_URL stays set
    for the process, as it is under ./scripts/dev (Chalice configures its sender only once)."""
    import app as app_module
    from devserver.server import LocalGatewayApp, load_config

    port = free_port()
    os.environ["LOCAL_GATEWAY_URL"] = f"http://127.0.0.1:{port}"
    gateway = LocalGatewayApp(app_module.app, load_config(ROOT, "dev"), static_dir=ROOT / "web", app_module="app")
    with serve(gateway.asgi, port) as url:
        yield url


def receive_until(ws: ClientConnection, event: str, *, timeout: float = 30.0, limit: int = 20000) -> list[dict[str, Any]]:
    """Frames up to and including the first `event` frame (bounded by count and time)."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for _ in range(limit):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        frames.append(json.loads(ws.recv(timeout=remaining)))
        if frames[-1]["event"] == event:
            return frames
    raise AssertionError(f"no {event!r} event; got {[f['event'] for f in frames][-20:]}")
