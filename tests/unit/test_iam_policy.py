"""Every AWS call the code makes has a line in the stage policies.

The scan finds each `client("<service>")` the code creates, then every method call in the code
whose name is an operation of one of those services, plus Chalice's websocket sends.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Storage goes to R2 with its own credentials, not to AWS IAM.
NOT_IAM = {"s3"}
CHALICE_WEBSOCKET = {"send": "execute-api:ManageConnections", "close": "execute-api:ManageConnections",
                     "info": "execute-api:ManageConnections"}


def iam_action(service: str, operation: str) -> str:
    if service == "apigatewaymanagementapi":
        return "execute-api:ManageConnections"
    if service == "lambda" and operation == "Invoke":
        return "lambda:InvokeFunction"
    return f"{service}:{operation}"


def required_actions(sources: dict[str, str]) -> set[str]:
    """IAM actions the given sources (path → text) need."""
    session = botocore.session.get_session()
    text = "\n".join(sources.values())
    services = set(re.findall(r"""\.client\(\s*["']([a-z0-9-]+)["']""", text))
    if "websocket_api" in text:
        services.add("apigatewaymanagementapi")
    calls = set(re.findall(r"\.([a-z_][a-z0-9_]*)\(", text))
    actions: set[str] = set()
    for service in services - NOT_IAM:
        model = session.get_service_model(service)
        snake = {botocore.xform_name(op): op for op in model.operation_names}
        actions |= {iam_action(service, snake[c]) for c in calls & set(snake)}
    if re.search(r"websocket_api\.(send|close|info)\(|websocket_api\.send\b", text) or "ChaliceSender" in text:
        actions.add("execute-api:ManageConnections")
    return actions


def code_sources() -> dict[str, str]:
    files = [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py"))]
    # The local gateway never runs in AWS.
    return {str(p): p.read_text() for p in files if "gateway" not in p.parts}


def policy_actions(path: Path) -> set[str]:
    return {a for s in json.loads(path.read_text())["Statement"] for a in s["Action"]}


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_every_aws_call_is_in_the_policy(stage: str) -> None:
    needed = required_actions(code_sources())
    assert {"lambda:InvokeFunction", "ssm:GetParameters", "secretsmanager:GetSecretValue", "execute-api:ManageConnections"} <= needed
    granted = policy_actions(ROOT / f".chalice/policy-{stage}.json")
    assert needed <= granted, f"add to .chalice/policy-{stage}.json: {sorted(needed - granted)}"
    cfn = json.loads((ROOT / f".chalice/merge-template-cfn-{stage}.json").read_text())
    for role in (r for r in cfn["Resources"].values() if "Policies" in r.get("Properties", {})):
        cfn_granted = {a for s in role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"] for a in s["Action"]}
        assert needed <= cfn_granted


def test_the_scan_catches_a_new_call() -> None:
    sources = {**code_sources(), "new.py": 'boto3.client("sqs").send_message(QueueUrl=q, MessageBody=b)\n'
                                          'self.client.invoke(FunctionName=f)\nssm.put_parameter(Name=n)'}
    needed = required_actions(sources)
    assert "sqs:SendMessage" in needed and "ssm:PutParameter" in needed
    assert not needed <= policy_actions(ROOT / ".chalice/policy-prod.json")


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_nothing_broader(stage: str) -> None:
    statements = json.loads((ROOT / f".chalice/policy-{stage}.json").read_text())["Statement"]
    for statement in statements:
        assert_scoped(statement, stage)
        assert not any(a.endswith("*") for a in statement["Action"])
    assert policy_actions(ROOT / f".chalice/policy-{stage}.json") == {
        "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "execute-api:ManageConnections",
        "lambda:InvokeFunction", "ssm:GetParameters", "secretsmanager:GetSecretValue", "servicediscovery:DiscoverInstances",
        "xray:PutTraceSegments", "xray:PutTelemetryRecords", "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage",
        "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"}


def assert_scoped(statement: dict[str, Any], stage: str) -> None:
    """No statement grants every resource, except DiscoverInstances (Cloud Map takes no resource ARN
    for it, so it is held to this stage's namespace by the NamespaceName condition key) and X-Ray's
    two write calls (which take no resource at all)."""
    if statement["Action"] == ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]:
        assert statement["Resource"] == "*" and "Condition" not in statement
    elif statement["Action"] == ["servicediscovery:DiscoverInstances"]:
        assert statement["Condition"] == {"StringEquals": {"servicediscovery:NamespaceName": f"claude-agent-{stage}.sandbox"}}
    else:
        assert statement["Resource"] != "*" and "Condition" not in statement
