"""The auth matrix, for every route."""

from __future__ import annotations

import pytest

from tests.support.api import Api

ROUTES = [
    ("POST", "/users/u1/skills", {"name": "a.md", "content": "x"}),
    ("GET", "/users/u1/skills", None),
    ("GET", "/users/u1/skills/a.md", None),
    ("DELETE", "/users/u1/skills/a.md", None),
    ("POST", "/users/u1/conversations", {"conversationId": "c1", "messages": []}),
    ("GET", "/users/u1/conversations", None),
    ("GET", "/users/u1/conversations/c1", None),
    ("DELETE", "/users/u1/conversations/c1", None),
    ("GET", "/users/u1/settings", None),
    ("PUT", "/users/u1/settings", {"maxTurns": 3}),
    ("PATCH", "/users/u1/settings", {"maxTurns": 4}),
    ("DELETE", "/users/u1", None),
    ("POST", "/setup/s1?userId=u1", None),
    ("DELETE", "/sandbox/s1", None),
]


def call(api: Api, method: str, path: str, body: object, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    if body is None and method in ("GET", "DELETE"):
        return api.get(path, headers) if method == "GET" else api.delete(path, headers)
    return api.send(method, path, body if body is not None else {}, headers=headers)


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_missing_and_wrong_keys_are_refused(local_api: Api, monkeypatch: pytest.MonkeyPatch, method: str, path: str, body: object) -> None:
    monkeypatch.setenv("API_KEY", "right-key")
    before = local_api.keys()
    missing = call(local_api, method, path, body)
    assert missing.status_code == 401 and missing.json_body["code"] == "missing_api_key"
    wrong = call(local_api, method, path, body, {"Authorization": "Bearer wrong-key"})
    assert wrong.status_code == 401 and wrong.json_body["code"] == "invalid_api_key"
    basic = call(local_api, method, path, body, {"Authorization": "Basic cmlnaHQta2V5"})
    assert basic.status_code == 401
    assert local_api.keys() == before


def test_right_key_passes_everywhere(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "right-key")
    auth = {"Authorization": "Bearer right-key"}
    for method, path, body in ROUTES:
        response = call(local_api, method, path, body, auth)
        assert response.status_code in (200, 404), (method, path, response.json_body)
        assert response.json_body.get("code") not in ("missing_api_key", "invalid_api_key")


def test_health_is_open(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "right-key")
    assert local_api.get("/health").status_code == 200


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_production_without_api_key_fails_closed(local_api: Api, monkeypatch: pytest.MonkeyPatch, method: str, path: str, body: object) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("API_KEY", raising=False)
    # Chalice's test client applies the stage's environment; the prod stage says production.
    local_api.client = type(local_api.client)(__import__("app").app, stage_name="prod", project_dir=local_api.client._project_dir)
    response = call(local_api, method, path, body, {"Authorization": "Bearer anything"})
    assert response.status_code == 500
    assert response.json_body["code"] == "api_key_not_configured"
    assert "API_KEY" in response.json_body["error"]


def test_production_health_still_answers(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    local_api.client = type(local_api.client)(__import__("app").app, stage_name="prod", project_dir=local_api.client._project_dir)
    monkeypatch.setenv("STORAGE_BACKEND", "s3")
    response = local_api.get("/health")
    assert response.status_code == 200 and response.json_body["environment"] == "production"


def test_development_without_api_key_is_open(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_KEY", raising=False)
    assert local_api.post("/users/u1/skills", {"name": "a.md", "content": "x"}).status_code == 200
