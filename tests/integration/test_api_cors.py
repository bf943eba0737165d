"""CORS: a console on another origin can call the API; production allows none by default."""

from __future__ import annotations

import pytest
from chalice.test import Client

from tests.support.api import ROOT, Api


def test_preflight_and_response_headers_in_development_with_a_key(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "dev-key")
    local_api.headers = {"Authorization": "Bearer dev-key"}
    pre = local_api.client.http.request("OPTIONS", "/users/alice/skills", headers={
        "Origin": "https://console.example.com", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"] and "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    got = local_api.get("/users/alice/skills", {"Origin": "https://console.example.com"})
    assert got.headers["Access-Control-Allow-Origin"] == "*" and "ETag" in got.headers["Access-Control-Expose-Headers"]
    error = local_api.get("/users/..bad/skills", {"Origin": "https://console.example.com"})
    assert error.status_code == 400 and error.headers["Access-Control-Allow-Origin"] == "*"


def test_open_development_allows_only_the_local_console(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_GATEWAY_URL", "http://127.0.0.1:8123")
    for own in ("http://127.0.0.1:8123", "http://localhost:8123"):
        assert local_api.get("/users/alice/skills", {"Origin": own}).headers["Access-Control-Allow-Origin"] == own
    for other in ("https://console.example.com", "http://127.0.0.1:9999", "http://rebound.example:8123"):
        assert "Access-Control-Allow-Origin" not in local_api.get("/users/alice/skills", {"Origin": other}).headers
    monkeypatch.delenv("LOCAL_GATEWAY_URL")  # served by chalice local or a Lambda: no console of its own
    assert "Access-Control-Allow-Origin" not in local_api.get("/health", {"Origin": "http://127.0.0.1:8123"}).headers


def test_configured_origins_only(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://app.example.com, https://admin.example.com")
    ok = local_api.get("/health", {"Origin": "https://app.example.com"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com" and ok.headers["Vary"] == "Origin"
    other = local_api.get("/health", {"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_production_allows_no_origin_by_default(local_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "s3")
    client = Client(__import__("app").app, stage_name="prod", project_dir=str(ROOT))
    response = client.http.get("/health", headers={"Origin": "https://console.example.com"})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers
    pre = client.http.request("OPTIONS", "/users/alice/skills", headers={"Origin": "https://console.example.com"})
    assert "Access-Control-Allow-Origin" not in pre.headers
