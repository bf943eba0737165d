"""The local gateway under concurrent load: each request sees only its own request.

Chalice keeps the request being handled on the app object; the gateway runs many requests at
once on worker threads. A tiny thread switch interval makes any sharing show up as a write
stored under another user or an unauthenticated request answered 200.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

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
