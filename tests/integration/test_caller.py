"""What a client signed in with a user token reads about itself: who it is (`GET /me`), its
limits and its usage; the operator reads any user's, another user's token none (the console's
sign-in and its usage panel rely on these)."""

from __future__ import annotations

import pytest

from tests.support.api import Api

SECRET = "user-token-secret-for-tests-0123456789"
OPERATOR = {"Authorization": "Bearer op"}


@pytest.fixture
def tokens(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    monkeypatch.setenv("API_KEY", "op")
    monkeypatch.setenv("USER_TOKEN_SECRET", SECRET)
    minted = {}
    for user in ("alice", "bob"):
        answer = local_api.post(f"/users/{user}/tokens", headers=OPERATOR)
        assert answer.status_code == 200, answer.json_body
        minted[user] = {"Authorization": f"Bearer {answer.json_body['token']}"}
    return minted


def test_me_names_the_user_a_token_signs_in_as(local_api: Api, tokens: dict[str, dict[str, str]]) -> None:
    assert local_api.get("/me", tokens["alice"]).json_body == {"role": "user", "userId": "alice"}
    assert local_api.get("/me", tokens["bob"]).json_body == {"role": "user", "userId": "bob"}
    assert local_api.get("/me", OPERATOR).json_body == {"role": "operator", "userId": None}
    token = tokens["alice"]["Authorization"]
    tampered = local_api.get("/me", {"Authorization": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")})
    assert tampered.status_code == 401 and tampered.json_body["code"] == "invalid_token"
    missing = local_api.get("/me")
    assert missing.status_code == 401 and missing.json_body["code"] == "missing_api_key"


def test_a_user_reads_its_own_limits_and_usage_only(local_api: Api, tokens: dict[str, dict[str, str]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_DAILY_BUDGET_USD", "2.5")
    monkeypatch.setenv("USER_STORAGE_MB", "10")
    raised = local_api.send("PUT", "/users/alice/limits", {"messagesPerMinute": 7}, headers=OPERATOR)
    assert raised.status_code == 200, raised.json_body
    expected = {"userId": "alice", "maxSessions": None, "messagesPerMinute": 7, "dailyBudgetUsd": 2.5, "storageMb": 10,
                "overridden": ["messages_per_minute"]}
    assert local_api.get("/users/alice/limits", tokens["alice"]).json_body == expected
    assert local_api.get("/users/alice/limits", OPERATOR).json_body == expected
    assert local_api.post("/users/alice/skills", {"name": "a.md", "content": "# A\nabc"}, headers=tokens["alice"]).status_code == 200
    usage = local_api.get("/users/alice/usage", tokens["alice"])
    assert usage.status_code == 200 and usage.json_body["storageBytes"] > 0 and len(usage.json_body["days"]) == 1
    assert local_api.get("/users/alice/usage", OPERATOR).json_body == usage.json_body
    for path in ("/users/alice/limits", "/users/alice/usage"):
        refused = local_api.get(path, tokens["bob"])
        assert refused.status_code == 403 and refused.json_body["code"] == "forbidden_user", path
    put = local_api.send("PUT", "/users/alice/limits", {"messagesPerMinute": 1000}, headers=tokens["alice"])
    assert put.status_code == 403 and put.json_body["code"] == "forbidden_user"
    assert local_api.get("/users/alice/limits", tokens["alice"]).json_body["messagesPerMinute"] == 7
