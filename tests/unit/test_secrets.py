"""Secrets from SSM Parameter Store and Secrets Manager (moto), read once, with clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from chalicelib import secrets
from chalicelib.errors import Misconfigured

ALL = {
    "API_KEY": "api-key",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "R2_ACCESS_KEY_ID": "r2-id",
    "R2_SECRET_ACCESS_KEY": "r2-secret",
    "SANDBOX_TOKEN": "sandbox-token",
}


@pytest.fixture(autouse=True)
def aws() -> Iterator[None]:
    secrets.reset_for_tests()
    with mock_aws():
        yield
    secrets.reset_for_tests()


def put_ssm(path: str, values: dict[str, str]) -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    for name, value in values.items():
        ssm.put_parameter(Name=f"{path}/{name}", Value=value, Type="SecureString")


def test_ssm_secrets_land_in_the_environment() -> None:
    put_ssm("/claude-agent/prod", ALL)
    env = {"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "ssm:/claude-agent/prod"}
    secrets.ensure_loaded(env)
    assert {k: env[k] for k in ALL} == ALL


def test_an_explicit_environment_variable_wins() -> None:
    put_ssm("/claude-agent/prod", ALL)
    env = {"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "ssm:/claude-agent/prod", "API_KEY": "override"}
    secrets.ensure_loaded(env)
    assert env["API_KEY"] == "override"


def test_secrets_are_read_once_per_process() -> None:
    put_ssm("/claude-agent/prod", ALL)
    session = boto3.session.Session()
    calls: list[str] = []
    session.events.register("before-call.ssm.*", lambda model, **_: calls.append(model.name))
    env = {"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "ssm:/claude-agent/prod"}
    for _ in range(5):
        secrets.ensure_loaded(env, session)
    assert calls == ["GetParameters"]


def test_a_missing_ssm_parameter_is_named() -> None:
    put_ssm("/claude-agent/prod", {k: v for k, v in ALL.items() if k != "ANTHROPIC_API_KEY"})
    with pytest.raises(Misconfigured) as caught:
        secrets.ensure_loaded({"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "ssm:/claude-agent/prod"})
    assert "/claude-agent/prod/ANTHROPIC_API_KEY" in caught.value.message
    assert "./scripts/put-secrets" in caught.value.message
    assert caught.value.code == "secret_missing"


def test_the_optional_sandbox_token_may_be_missing() -> None:
    put_ssm("/claude-agent/dev", {k: v for k, v in ALL.items() if k != "SANDBOX_TOKEN"})
    env = {"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "ssm:/claude-agent/dev"}
    secrets.ensure_loaded(env)
    assert "SANDBOX_TOKEN" not in env and env["API_KEY"] == "api-key"


def test_secrets_manager_json_secret() -> None:
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="claude-agent/prod", SecretString=json.dumps(ALL)
    )
    env = {"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "secretsmanager:claude-agent/prod"}
    secrets.ensure_loaded(env)
    assert env["ANTHROPIC_API_KEY"] == "sk-ant-test"


def test_a_missing_secrets_manager_secret_is_named() -> None:
    with pytest.raises(Misconfigured) as caught:
        secrets.ensure_loaded({"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "secretsmanager:claude-agent/nope"})
    assert "'claude-agent/nope' does not exist" in caught.value.message


def test_a_secret_lacking_a_key_is_named() -> None:
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="claude-agent/prod", SecretString=json.dumps({"API_KEY": "x"})
    )
    with pytest.raises(Misconfigured) as caught:
        secrets.ensure_loaded({"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "secretsmanager:claude-agent/prod"})
    assert "ANTHROPIC_API_KEY" in caught.value.message and "R2_SECRET_ACCESS_KEY" in caught.value.message


def test_a_bad_source_says_what_to_write() -> None:
    with pytest.raises(Misconfigured) as caught:
        secrets.ensure_loaded({"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "vault:/x"})
    assert "ssm:/claude-agent/<stage>" in caught.value.message


def test_no_source_means_no_lookup() -> None:
    env: dict[str, str] = {"AWS_LAMBDA_FUNCTION_NAME": "f"}
    secrets.ensure_loaded(env)
    assert env == {"AWS_LAMBDA_FUNCTION_NAME": "f"}


def test_outside_lambda_the_source_is_ignored() -> None:
    env = {"SECRETS_SOURCE": "ssm:/claude-agent/dev"}
    secrets.ensure_loaded(env)  # no parameters exist: it would raise if it looked
    assert env == {"SECRETS_SOURCE": "ssm:/claude-agent/dev"}


def test_put_secrets_then_load_them_round_trip(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from scripts import put_secrets

    for name, value in ALL.items():
        monkeypatch.setenv(name, value)
    assert put_secrets.main(["--stage", "prod", "--no-prompt"]) == 0
    out = capsys.readouterr().out
    assert "ssm:/claude-agent/prod" in out
    assert all(value not in out for value in ALL.values())  # never printed
    env = {"AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "SECRETS_SOURCE": "ssm:/claude-agent/prod"}
    secrets.ensure_loaded(env)
    assert {k: env[k] for k in ALL} == ALL
    param = boto3.client("ssm", region_name="us-east-1").get_parameter(Name="/claude-agent/prod/API_KEY")["Parameter"]
    assert param["Type"] == "SecureString"


def test_put_secrets_refuses_without_a_required_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from scripts import put_secrets

    for name in ALL:
        monkeypatch.delenv(name, raising=False)
    assert put_secrets.main(["--stage", "dev", "--no-prompt"]) == 2
