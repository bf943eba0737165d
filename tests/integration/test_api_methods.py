"""A wrong method on a known path is the API's JSON 405 with an Allow header (issue 12)."""

from __future__ import annotations

import json

import pytest

from tests.support.api import Api

CASES = [
    ("GET", "/users/alice", "DELETE, OPTIONS"),
    ("POST", "/health", "GET, OPTIONS"),
    ("PUT", "/users/alice/skills", "GET, OPTIONS, POST"),
    ("PATCH", "/users/alice/conversations/c1", "DELETE, GET, OPTIONS"),
    ("DELETE", "/users/alice/settings", "GET, OPTIONS, PATCH, PUT"),
    ("GET", "/setup/s1", "OPTIONS, POST"),
]


@pytest.mark.parametrize("method,path,allow", CASES)
def test_wrong_method_is_a_json_405_with_allow(local_api: Api, method: str, path: str, allow: str) -> None:
    response = local_api.send(method, path, raw=b"")
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    body = json.loads(response.body)
    assert body["code"] == "method_not_allowed" and set(body) == {"error", "code"}
    assert f"{method} is not supported" in body["error"] and allow in body["error"]


def test_the_405_comes_before_auth_and_writes_nothing(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "k" * 32)
    before = local_api.keys()
    response = local_api.send("PUT", "/users/alice", {"x": 1})
    assert response.status_code == 405 and json.loads(response.body)["code"] == "method_not_allowed"
    assert local_api.keys() == before
    # The real routes are untouched: still guarded, still answering.
    assert local_api.delete("/users/alice").status_code == 401
    assert local_api.delete("/users/alice", headers={"Authorization": "Bearer " + "k" * 32}).status_code == 200
