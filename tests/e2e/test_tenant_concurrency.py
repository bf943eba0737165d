"""Races between setups, through the local gateway over real HTTP (chalice's test client swaps
os.environ per request, which parallel requests would corrupt).

- 20 parallel /setup calls of one user with USER_MAX_SESSIONS=3 leave exactly 3 live sandboxes.
- Two users racing for a new session id: one owns it, the other is refused.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chalicelib.config import current_settings
from chalicelib.container import get_container
from chalicelib.sandbox.base import SandboxGone

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def live(session_ids: list[str]) -> list[str]:
    sandboxes = get_container(current_settings()).sandboxes
    alive = []
    for session_id in session_ids:
        try:
            sandboxes.get(session_id)
        except SandboxGone:
            continue
        alive.append(session_id)
    return alive


def test_twenty_parallel_setups_leave_exactly_the_limit(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_MAX_SESSIONS", "3")
    ids = [f"q{i}" for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda sid: world.http.post(f"/setup/{sid}?userId=alice"), ids))
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(ok) == 3, [(a.status_code, a.text[:120]) for a in answers]
    assert all(a.status_code == 429 and a.json()["code"] == "quota_exceeded" for a in refused), refused[0].text
    assert all("USER_MAX_SESSIONS=3" in a.json()["error"] and int(a.headers["Retry-After"]) > 0 for a in refused)
    kept = sorted(a.json()["sessionId"] for a in ok)
    assert sorted(live(ids)) == kept  # exactly the three that were answered 200 run a sandbox
    # Another user has their own count; a session set up again keeps its slot.
    assert world.http.post("/setup/other1?userId=bob").status_code == 200
    assert world.http.post(f"/setup/{kept[0]}?userId=alice").status_code == 200
    assert world.http.post("/setup/q-late?userId=alice").status_code == 429
    assert world.http.delete(f"/sandbox/{kept[0]}").status_code == 200  # ending one frees its slot
    assert world.http.post("/setup/q-late?userId=alice").status_code == 200


def test_two_users_racing_for_a_new_id_leave_one_owner(world: Any) -> None:
    users = ["alice" if i % 2 else "bob" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda user: world.http.post(f"/setup/contested?userId={user}"), users))
    owners = {a.json()["userId"] for a in answers if a.status_code == 200}
    assert len(owners) == 1, [(a.status_code, a.text[:120]) for a in answers]
    loser = ({"alice", "bob"} - owners).pop()
    assert all(a.json()["code"] in ("session_owned_by_another_user", "concurrent_setup")
               for a, user in zip(answers, users, strict=True) if user == loser)
    assert world.http.post(f"/setup/contested?userId={loser}").status_code == 409
