"""Per-user quotas: live sessions and messages a minute, counted in storage under concurrency."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chalicelib.config import QuotaSettings
from chalicelib.errors import QuotaExceeded
from chalicelib.services.quotas import LimitsUpdate, QuotasService
from chalicelib.storage.local import LocalDirectoryStore
from tests.support.api import Api

bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def live_sandboxes(api: Api) -> list[str]:
    root = api.data_dir.parent / "sandboxes"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


@bwrap
@pytest.mark.slow
def test_twenty_parallel_setups_leave_exactly_the_limit(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_MAX_SESSIONS", "3")
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda i: api.post(f"/setup/q{i}?userId=alice"), range(20)))
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(ok) == 3, [(a.status_code, a.json_body) for a in answers]
    assert all(a.status_code == 429 and a.json_body["code"] == "quota_exceeded" for a in refused), refused[0].json_body
    assert all("USER_MAX_SESSIONS=3" in a.json_body["error"] and int(a.headers["Retry-After"]) > 0 for a in refused)
    live = [a.json_body["sessionId"] for a in ok]
    assert sorted(live) == [s for s in live_sandboxes(api) if s in live] and len(live_sandboxes(api)) == 3
    # Another user has their own count; a session set up again holds its slot, not a new one.
    assert api.post("/setup/other1?userId=bob").status_code == 200
    assert api.post(f"/setup/{live[0]}?userId=alice").status_code == 200
    # Ending one frees its slot.
    assert api.post("/setup/q-late?userId=alice").status_code == 429
    assert api.delete(f"/sandbox/{live[0]}").status_code == 200
    assert api.post("/setup/q-late?userId=alice").status_code == 200


@bwrap
@pytest.mark.slow
def test_a_sandbox_gone_behind_the_api_frees_its_slot(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_workspace_files import container_sandboxes

    monkeypatch.setenv("USER_MAX_SESSIONS", "1")
    assert local_api.post("/setup/r1?userId=alice").status_code == 200
    assert local_api.post("/setup/r2?userId=alice").status_code == 429
    assert container_sandboxes().destroy("r1")  # as the idle reaper does
    assert local_api.post("/setup/r2?userId=alice").status_code == 200


@bwrap
@pytest.mark.slow
def test_operator_overrides_per_user(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "op")
    monkeypatch.setenv("USER_MAX_SESSIONS", "1")
    op = {"Authorization": "Bearer op"}
    assert local_api.get("/users/alice/limits", op).json_body == {
        "userId": "alice", "maxSessions": 1, "messagesPerMinute": None, "overridden": []}
    raised = local_api.send("PUT", "/users/alice/limits", {"maxSessions": 2, "messagesPerMinute": 5}, headers=op)
    assert raised.status_code == 200 and raised.json_body["maxSessions"] == 2, raised.json_body
    assert local_api.post("/setup/o1?userId=alice", headers=op).status_code == 200
    assert local_api.post("/setup/o2?userId=alice", headers=op).status_code == 200
    assert local_api.post("/setup/o3?userId=alice", headers=op).status_code == 429
    assert local_api.post("/setup/o4?userId=bob", headers=op).status_code == 200  # bob keeps the setting's 1
    assert local_api.post("/setup/o5?userId=bob", headers=op).status_code == 429
    unlimited = local_api.send("PUT", "/users/bob/limits", {"maxSessions": None}, headers=op)
    assert unlimited.json_body["maxSessions"] is None and unlimited.json_body["overridden"] == ["max_sessions"]
    assert local_api.post("/setup/o5?userId=bob", headers=op).status_code == 200
    bad = local_api.send("PUT", "/users/bob/limits", {"maxSessions": 0}, headers=op)
    assert bad.status_code == 400
    assert local_api.send("PUT", "/users/bob/limits", {"sessions": 3}, headers=op).status_code == 400


def test_parallel_message_counts_lose_no_increment(tmp_path: Any) -> None:
    quotas = QuotasService(QuotaSettings(messages_per_minute=30), LocalDirectoryStore(tmp_path), clock=lambda: 1_800_000_010.0)

    def send(_: int) -> bool:
        try:
            quotas.count_message("alice")
        except QuotaExceeded as exc:
            assert 1 <= exc.retry_after <= 61
            return False
        return True

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, range(50)))
    assert results.count(True) == 30 and results.count(False) == 20
    later = QuotasService(QuotaSettings(messages_per_minute=30), LocalDirectoryStore(tmp_path), clock=lambda: 1_800_000_070.0)
    later.count_message("alice")  # a new minute
    quotas.set_limits("bob", LimitsUpdate(messagesPerMinute=1))
    quotas.count_message("bob")
    with pytest.raises(QuotaExceeded):
        quotas.count_message("bob")
