"""The local gateway under concurrent load: each request sees only its own request.

Chalice keeps the request being handled on the app object; the gateway runs many requests at
once on worker threads. A tiny thread switch interval makes any sharing show up as a write
stored under another user or an unauthenticated request answered 200.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.fakes.fake_anthropic import Endless
from tests.support.gateway import receive_until

API_KEY = "stress-key"
USERS = [f"user{n}" for n in range(8)]
PER_USER = 60


@pytest.fixture
def tiny_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_concurrent_uploads_are_never_misrouted_or_let_through(  # type: ignore[no-untyped-def]
        world, monkeypatch: pytest.MonkeyPatch, tiny_switch_interval: None) -> None:
    monkeypatch.setenv("API_KEY", API_KEY)
    outcomes: list[tuple[str, int, bool, int]] = []  # (user, index, authorized, status)
    lock = threading.Lock()

    def client_of(user: str) -> None:
        with httpx.Client(base_url=world.url, timeout=60) as http:
            for index in range(PER_USER):
                authorized = index % 2 == 0
                headers = {"Authorization": f"Bearer {API_KEY}"} if authorized else {}
                response = http.post(f"/users/{user}/skills", headers=headers,
                                     json={"name": f"{user}-{index}.md", "content": f"# {user} {index}\n\nbody"})
                with lock:
                    outcomes.append((user, index, authorized, response.status_code))

    with ThreadPoolExecutor(max_workers=len(USERS)) as pool:
        list(pool.map(client_of, USERS))

    assert len(outcomes) == len(USERS) * PER_USER
    unauthenticated_ok = [o for o in outcomes if not o[2] and o[3] == 200]
    refused_authorized = [o for o in outcomes if o[2] and o[3] != 200]
    stored = _stored_skills(world.data_dir)
    misrouted = [(owner, name) for owner, names in stored.items() for name in names if not name.startswith(f"{owner}-")]
    answered_not_made = [o for o in outcomes if o[3] == 200 and f"{o[0]}-{o[1]}.md" not in stored.get(o[0], set())]
    counts = {"unauthenticated 200": len(unauthenticated_ok), "stored under another user": len(misrouted),
              "answered 200, never made": len(answered_not_made), "authorized but refused": len(refused_authorized)}
    assert counts == dict.fromkeys(counts, 0), f"{counts}; e.g. {(unauthenticated_ok + misrouted + refused_authorized)[:5]}"
    assert sum(len(names) for names in stored.values()) == len(USERS) * PER_USER // 2


def _stored_skills(data_dir: Path) -> dict[str, set[str]]:
    users = data_dir / "users"
    return {folder.name: {f.name for f in (folder / "skills").glob("*.md")}
            for folder in users.iterdir() if (folder / "skills").is_dir()} if users.is_dir() else {}


RUNNING_TURNS = 10  # more than the 8 workers frames and turns used to share


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_an_interrupt_is_acknowledged_while_many_turns_run(world) -> None:  # type: ignore[no-untyped-def]
    world.fake.script(*[Endless(delta="word ", delay=0.2, max_deltas=3000) for _ in range(RUNNING_TURNS)])
    setups = [world.setup(f"sess-many-{n}", f"many{n}") for n in range(RUNNING_TURNS)]
    with ExitStack() as stack:
        sockets = [stack.enter_context(connect(world.ws_url(s))) for s in setups]
        try:
            for ws in sockets:
                ws.send(json.dumps({"action": "message", "prompt": "talk for a while"}))
            for ws in sockets:  # every turn is running: each has streamed
                receive_until(ws, "stream", timeout=30)
            target = sockets[-1]
            sent = time.monotonic()
            target.send(json.dumps({"action": "interrupt"}))
            frames = receive_until(target, "result", timeout=15)
            acknowledged = next(f for f in frames if f["event"] == "status" and f.get("status") == "interrupting")
            assert acknowledged and frames[-1]["interrupted"]
            assert time.monotonic() - sent < 15
        finally:
            _stop_all(sockets[:-1])


def _stop_all(sockets: list[ClientConnection]) -> None:
    """Interrupt every other turn and wait for its end, so none outlives the test."""
    for ws in sockets:
        with suppress(ConnectionClosed):
            ws.send(json.dumps({"action": "interrupt"}))
    for ws in sockets:
        with suppress(ConnectionClosed, AssertionError, TimeoutError):
            receive_until(ws, "result", timeout=30)
