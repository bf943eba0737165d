"""`chalice package`, offline: both formats hold what a deployment needs, within Lambda's limits."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scripts.package import PackagingError, check_sam, check_terraform
from tests.support.scrubbed_env import scrubbed_env

ROOT = Path(__file__).resolve().parents[2]
CHALICE = str(Path(sys.executable).with_name("chalice"))
ZIPPED_LIMIT = 50 * 1024 * 1024
UNZIPPED_LIMIT = 250 * 1024 * 1024

pytestmark = pytest.mark.slow


def package(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """./scripts/package as the README runs it: no AWS configuration at all (scrubbed environment)."""
    result = subprocess.run(["./scripts/package", "--stage", "prod", *args, str(out)], cwd=ROOT,
                            env=scrubbed_env(out.parent / "home"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def cfn(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("cfn") / "out"
    result = package(out)
    assert "no AWS region configured: packaging with us-east-1" in result.stderr
    return json.loads((out / "sam.json").read_text()), out / "deployment.zip"


@pytest.fixture(scope="module")
def terraform(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("tf") / "out"
    package(out, "--format", "terraform")
    return json.loads((out / "chalice.tf.json").read_text()), out


def test_cloudformation_has_both_apis_the_runner_and_the_wiring(cfn) -> None:  # type: ignore[no-untyped-def]
    template, _ = cfn
    resources = template["Resources"]
    assert resources["RestAPI"]["Type"] == "AWS::Serverless::Api"
    assert resources["WebsocketAPI"]["Type"] == "AWS::ApiGatewayV2::Api"
    routes = {r["Properties"]["RouteKey"] for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Route"}
    assert routes == {"$connect", "$default", "$disconnect"}
    runner = resources["TurnRunner"]["Properties"]
    assert runner["Handler"] == "app.turn_runner" and runner["Timeout"] == 900
    assert resources["WebsocketConnect"]["Properties"]["Timeout"] <= 10
    env = resources["WebsocketMessage"]["Properties"]["Environment"]["Variables"]
    assert env["TURN_RUNNER_FUNCTION"] == {"Ref": "TurnRunner"}  # CloudFormation names the function
    assert "WebsocketAPI" in env["WEBSOCKET_URL"]["Fn::Sub"]
    api_env = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert api_env["ENVIRONMENT"] == "production" and api_env["SECRETS_SOURCE"] == "ssm:/claude-agent/prod"
    assert not any(k in api_env for k in ("API_KEY", "ANTHROPIC_API_KEY", "R2_SECRET_ACCESS_KEY", "SANDBOX_TOKEN"))


def test_cloudformation_policies_are_least_privilege(cfn) -> None:  # type: ignore[no-untyped-def]
    template, _ = cfn
    roles = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert len(roles) == 5
    for role in roles:
        statements = role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        actions = sorted(a for s in statements for a in s["Action"])
        assert actions == sorted(["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                  "execute-api:ManageConnections", "lambda:InvokeFunction", "ssm:GetParameters",
                                  "secretsmanager:GetSecretValue"])
        for statement in statements:
            assert statement["Resource"] != "*" and "*:*:*" not in json.dumps(statement["Resource"])
        manage = next(s for s in statements if s["Action"] == ["execute-api:ManageConnections"])
        assert "${WebsocketAPI}" in manage["Resource"]["Fn::Sub"]


def test_terraform_has_both_apis_the_runner_and_the_override(terraform) -> None:  # type: ignore[no-untyped-def]
    template, out = terraform
    resources = template["resource"]
    assert "websocket_api" in resources["aws_apigatewayv2_api"]
    assert set(resources["aws_apigatewayv2_route"]) == {"websocket_connect_route", "websocket_message_route", "websocket_disconnect_route"}
    runner = resources["aws_lambda_function"]["turn_runner"]
    assert runner["function_name"] == "claude-agent-backend-prod-turn_runner" and runner["timeout"] == 900
    assert runner["environment"]["variables"]["TURN_RUNNER_FUNCTION"] == "claude-agent-backend-prod-turn_runner"
    override = json.loads((out / "prod_override.tf.json").read_text())["resource"]["aws_lambda_function"]["api_handler"]
    assert "aws_apigatewayv2_api.websocket_api.id" in override["environment"]["variables"]["WEBSOCKET_URL"]
    assert "aws_region" in template["data"]  # the override's reference resolves
    policies = resources["aws_iam_role_policy"]
    for policy in policies.values():
        statements = json.loads(policy["policy"])["Statement"] if isinstance(policy["policy"], str) else policy["policy"]["Statement"]
        assert {a for s in statements for a in s["Action"]} <= {
            "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "execute-api:ManageConnections",
            "lambda:InvokeFunction", "ssm:GetParameters", "secretsmanager:GetSecretValue"}


def test_deployment_zip_fits_lambda(cfn) -> None:  # type: ignore[no-untyped-def]
    _, zip_path = cfn
    zipped = zip_path.stat().st_size
    with zipfile.ZipFile(zip_path) as archive:
        unzipped = sum(i.file_size for i in archive.infolist())
        names = archive.namelist()
    print(f"\ndeployment.zip: {zipped / 1e6:.1f} MB zipped, {unzipped / 1e6:.1f} MB unzipped, {len(names)} files")
    assert zipped < ZIPPED_LIMIT and unzipped < UNZIPPED_LIMIT
    assert "app.py" in names and "chalicelib/container.py" in names
    assert any(n.startswith("anthropic/") for n in names) and any(n.startswith("pydantic_core/") for n in names)
    assert not any(n.startswith(("tests/", "moto/", "sandbox_host/")) for n in names)


def test_every_function_is_wired_and_plain_chalice_package_output_is_refused(cfn) -> None:  # type: ignore[no-untyped-def]
    template, _ = cfn
    for name in ("APIHandler", "WebsocketConnect", "WebsocketMessage", "WebsocketDisconnect"):
        env = template["Resources"][name]["Properties"]["Environment"]["Variables"]
        assert env["TURN_RUNNER_FUNCTION"] == {"Ref": "TurnRunner"} and "${WebsocketAPI}" in env["WEBSOCKET_URL"]["Fn::Sub"]
    check_sam(template)
    # What plain `chalice package` (no merge template) gives: a name SAM will not use, no WEBSOCKET_URL.
    plain = copy.deepcopy(template)
    for resource in plain["Resources"].values():
        variables = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
        if "TURN_RUNNER_FUNCTION" in variables:
            variables["TURN_RUNNER_FUNCTION"] = "claude-agent-backend-prod-turn_runner"
            variables.pop("WEBSOCKET_URL", None)
    with pytest.raises(PackagingError, match="TURN_RUNNER_FUNCTION is 'claude-agent-backend-prod-turn_runner'"):
        check_sam(plain)


def test_terraform_wiring_is_checked(terraform) -> None:  # type: ignore[no-untyped-def]
    template, out = terraform
    override = json.loads((out / "prod_override.tf.json").read_text())
    check_terraform(template, override)
    with pytest.raises(PackagingError, match="does not set WEBSOCKET_URL"):
        check_terraform(template, {"resource": {}})
