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
        "userId": "alice", "maxSessions": 1, "messagesPerMinute": None, "dailyBudgetUsd": None, "storageMb": None,
        "overridden": []}
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


@bwrap
@pytest.mark.slow
def test_uploads_past_the_storage_quota_are_413(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_STORAGE_MB", "1")
    half = "x" * (600 * 1024)
    assert local_api.post("/users/alice/skills", {"name": "a.md", "content": half}).status_code == 200
    before = local_api.keys()
    over = local_api.post("/users/alice/skills", {"name": "b.md", "content": half})
    assert over.status_code == 413 and over.json_body["code"] == "storage_quota_exceeded", over.json_body
    assert "USER_STORAGE_MB=1" in over.json_body["error"]
    conv = local_api.post("/users/alice/conversations", {"conversationId": "c1", "messages": [half]})
    assert conv.status_code == 413 and conv.json_body["code"] == "storage_quota_exceeded"
    assert local_api.post("/setup/st1?userId=alice").status_code == 200
    before = local_api.keys()
    big = local_api.send("PUT", "/sessions/st1/files/content?path=big.bin", raw=b"y" * (600 * 1024),
                         headers={"Content-Type": "application/octet-stream"})
    assert big.status_code == 413 and big.json_body["code"] == "storage_quota_exceeded", big.json_body
    assert local_api.keys() == before
    # Another user's storage is their own; deleting frees room.
    assert local_api.post("/users/bob/skills", {"name": "b.md", "content": half}).status_code == 200
    assert local_api.delete("/users/alice/skills/a.md").status_code == 200
    assert local_api.post("/users/alice/skills", {"name": "b.md", "content": half}).status_code == 200
