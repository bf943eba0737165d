"""A deployment without WEBSOCKET_URL refuses /setup, naming the supported way to get it, instead
of sending clients to the REST API's host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib import secrets
from tests.support.api import ROOT

AUTH = {"Authorization": "Bearer k-api"}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """The app as Lambda runs it: AWS_LAMBDA_FUNCTION_NAME set, secrets read from SSM (moto)."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SANDBOX_ROOT", str(tmp_path / "sb"))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "stack-APIHandler-AbC123")
    monkeypatch.setattr(secrets, "_loaded_source", None)
    monkeypatch.setattr(secrets, "_failure", None)
    for name in secrets.REQUIRED:  # so that what the secrets loader sets is undone after the test
        monkeypatch.setenv(name, "k-api" if name == "API_KEY" else "x")
    with mock_aws():
        ssm = boto3.client("ssm", region_name="us-east-1")
        for name in secrets.REQUIRED:
            ssm.put_parameter(Name=f"/claude-agent/dev/{name}", Value="x", Type="SecureString")
        yield Client(__import__("app").app, stage_name="dev", project_dir=str(ROOT))


def test_setup_in_lambda_without_websocket_url_is_refused(client: Client) -> None:
    response = client.http.post("/setup/s-1?userId=alice", headers=AUTH)
    assert response.status_code == 500
    assert response.json_body["code"] == "websocket_url_not_configured"
    assert "./scripts/package" in response.json_body["error"]


def test_setup_in_lambda_returns_the_configured_websocket_url(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSOCKET_URL", "wss://abc.execute-api.eu-west-3.amazonaws.com/api")
    response = client.http.post("/setup/s-2?userId=alice", headers=AUTH)
    assert response.status_code == 200, response.body
    assert response.json_body["websocketUrl"] == "wss://abc.execute-api.eu-west-3.amazonaws.com/api?sessionId=s-2"
