"""The local gateway gives the same JSON 405 as chalice.test.Client for a wrong method (issue 12)."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("method,path,allow", [("GET", "/users/alice", "DELETE, OPTIONS"), ("POST", "/health", "GET, OPTIONS")])
def test_wrong_method_through_the_local_gateway(gateway_url: str, method: str, path: str, allow: str) -> None:
    response = httpx.request(method, gateway_url + path, timeout=10)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    assert response.json()["code"] == "method_not_allowed" and set(response.json()) == {"error", "code"}
