"""The sandbox plane's stack (deploy/sandbox-fleet.json and its Terraform equivalent): it lints
clean (cfn-lint, checkov with only the README's explained exceptions), and it is wired to what
the code does: the namespace the Lambdas' policy allows, the metric the hosts print and the
service scales on, the capabilities bubblewrap needs, hosts reachable only from the Lambdas."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chalicelib.sandbox.discovery import CloudMapService
from sandbox_host.metrics import MetricsSettings, emf_line

ROOT = Path(__file__).resolve().parents[2]
CFN = ROOT / "deploy" / "sandbox-fleet.json"
TERRAFORM = ROOT / "deploy" / "sandbox_fleet.tf.json"
# checkov pins boto3 1.35 and other packages the app's lock moves past, so it runs in an
# environment of its own, from its own lock (requirements-checkov.txt).


def cfn() -> dict[str, Any]:
    return json.loads(CFN.read_text())  # type: ignore[no-any-return]


def terraform() -> dict[str, Any]:
    return json.loads(TERRAFORM.read_text())  # type: ignore[no-any-return]


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in cfn()["Resources"].items() if r["Type"] == kind}


def test_cfn_lint_finds_nothing() -> None:
    from cfnlint.api import lint_file

    # Errors, warnings and informational findings alike: none.
    assert [str(match) for match in lint_file(CFN)] == []


def test_cfn_lint_would_say_so() -> None:
    """The check above can fail: an IAM role with a misspelt property is an error."""
    from cfnlint.api import lint

    broken = cfn()
    broken["Resources"]["TaskRole"]["Properties"]["Polices"] = broken["Resources"]["TaskRole"]["Properties"].pop("Policies")
    assert any("Polices" in str(match) for match in lint(json.dumps(broken)))


def explained_checkov_exceptions(heading: str = "**checkov exceptions, sandbox fleet stack**") -> dict[str, str]:
    """The README's `checkov` exceptions under `heading`: one line each, `- \\`CKV_...\\` (where): why`."""
    section = (ROOT / "README.md").read_text().split(heading, 1)[1].split("\n\n", 2)[1]
    found = dict(re.findall(r"^- `(CKV2?_AWS_\d+)` ([^\n]+)$", section, re.M))
    assert found, f"no exception lines under {heading} in README.md"
    return found


def checkov() -> Path:
    """checkov in its own environment (.venv-checkov), installed exactly as requirements-checkov.txt
    pins it (hashes, no resolution), again whenever that lock changes."""
    lock = ROOT / "requirements-checkov.txt"
    env = ROOT / ".venv-checkov"
    stamp = env / ".installed"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(env)], check=True, timeout=300)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(env / "bin/python"), "--require-hashes",
                        "--no-deps", "-r", str(lock)], check=True, timeout=900)
        stamp.write_text(digest)
    return env / "bin/checkov"


def checkov_failures(path: Path, framework: str, tmp_path: Path) -> set[str]:
    done = subprocess.run([str(checkov()), "-f", str(path), "--framework", framework,
                           "--output", "json", "--quiet", "--compact", "--skip-download"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    if done.returncode not in (0, 1) or not done.stdout.strip().startswith(("{", "[")):
        raise AssertionError(f"checkov did not run ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    return {check["check_id"] for r in reports for check in r.get("results", {}).get("failed_checks", [])}


@pytest.mark.slow
def test_checkov_fails_only_the_checks_the_readme_explains(tmp_path: Path) -> None:
    explained = explained_checkov_exceptions()
    failed = checkov_failures(CFN, "cloudformation", tmp_path) | checkov_failures(TERRAFORM, "terraform_json", tmp_path)
    assert failed == set(explained), (f"unexplained: {sorted(failed - set(explained))}; "
                                      f"explained but passing (remove the line): {sorted(set(explained) - failed)}")


def test_instances_keep_their_credentials_from_the_tasks() -> None:
    data = next(iter(resources("AWS::EC2::LaunchTemplate").values()))["LaunchTemplateData"]
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"}
    assert "ECS_AWSVPC_BLOCK_IMDS=true" in data["UserData"]["Fn::Base64"]["Fn::Sub"]
    template = terraform()["resource"]["aws_launch_template"]["hosts"]
    assert template["metadata_options"] == {"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1}
    assert "ECS_AWSVPC_BLOCK_IMDS=true" in template["user_data"]


def test_hosts_accept_connections_from_the_lambdas_group_only() -> None:
    groups = resources("AWS::EC2::SecurityGroup")
    assert groups["HostSecurityGroup"]["SecurityGroupIngress"] == [
        {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "SourceSecurityGroupId": {"Ref": "ClientSecurityGroup"},
         "Description": "The app Lambdas"}]
    assert "SecurityGroupIngress" not in groups["InstanceSecurityGroup"] and "SecurityGroupIngress" not in groups["ClientSecurityGroup"]
    assert not resources("AWS::EC2::SecurityGroupIngress")
    service = resources("AWS::ECS::Service")["Service"]
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"] == [{"Ref": "HostSecurityGroup"}]
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    tf = terraform()["resource"]
    assert [r["referenced_security_group_id"] for r in tf["aws_vpc_security_group_ingress_rule"].values()] == ["${aws_security_group.client.id}"]
    assert tf["aws_ecs_service"]["hosts"]["network_configuration"]["security_groups"] == ["${aws_security_group.hosts.id}"]


def test_the_task_has_what_bubblewrap_and_fuse_need_and_one_host_per_instance() -> None:
    definition = resources("AWS::ECS::TaskDefinition")["TaskDefinition"]
    container = definition["ContainerDefinitions"][0]
    assert definition["NetworkMode"] == "awsvpc" and definition["RequiresCompatibilities"] == ["EC2"]
    assert container["LinuxParameters"]["Capabilities"] == {"Add": ["SYS_ADMIN"]}
    assert [d["HostPath"] for d in container["LinuxParameters"]["Devices"]] == ["/dev/fuse"]
    assert container["DockerSecurityOptions"] == ["apparmor:unconfined"] and container["Privileged"] is False
    assert container["Secrets"][0]["Name"] == "SANDBOX_TOKEN"
    assert resources("AWS::ECS::Service")["Service"]["PlacementConstraints"] == [{"Type": "distinctInstance"}]
    tf_container = json.loads(terraform()["resource"]["aws_ecs_task_definition"]["host"]["container_definitions"])[0]
    assert tf_container["linuxParameters"]["capabilities"] == {"add": ["SYS_ADMIN"]}
    assert tf_container["dockerSecurityOptions"] == ["apparmor:unconfined"]
    assert {e["name"]: e["value"] for e in tf_container["environment"]} == {
        e["Name"]: e["Value"] if isinstance(e["Value"], str) else "${var.host_capacity}" for e in container["Environment"]
    } | {"SANDBOX_METRICS_SERVICE": "claude-agent-${var.stage}-sandbox-hosts"}


def test_the_sandbox_url_output_names_the_namespace_the_lambdas_may_discover() -> None:
    namespace = resources("AWS::ServiceDiscovery::HttpNamespace")["Namespace"]["Name"]["Fn::Sub"]
    url = cfn()["Outputs"]["SandboxUrl"]["Value"]["Fn::Sub"]
    for stage in ("dev", "prod"):
        parsed = CloudMapService.parse(url.replace("${Stage}", stage))
        assert parsed.namespace == namespace.replace("${Stage}", stage)
        assert parsed.service == resources("AWS::ServiceDiscovery::Service")["DiscoveryService"]["Name"]
        policy = json.loads((ROOT / f".chalice/policy-{stage}.json").read_text())
        allowed = next(s for s in policy["Statement"] if s["Action"] == ["servicediscovery:DiscoverInstances"])
        assert allowed["Condition"]["StringEquals"]["servicediscovery:NamespaceName"] == parsed.namespace
    tf_url = terraform()["output"]["sandbox_url"]["value"].replace("${var.stage}", "prod")
    assert CloudMapService.parse(tf_url) == CloudMapService.parse(url.replace("${Stage}", "prod"))
    registry = resources("AWS::ECS::Service")["Service"]["ServiceRegistries"][0]
    assert registry == {"RegistryArn": {"Fn::GetAtt": ["DiscoveryService", "Arn"]}, "ContainerName": "sandbox-host", "ContainerPort": 8080}


def test_the_service_scales_on_the_metric_the_hosts_print() -> None:
    container = resources("AWS::ECS::TaskDefinition")["TaskDefinition"]["ContainerDefinitions"][0]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    printed = json.loads(emf_line(MetricsSettings(namespace=environment["SANDBOX_METRICS_NAMESPACE"],
                                                  service=environment["SANDBOX_METRICS_SERVICE"]["Fn::Sub"]), "h", 1, 0, False))
    directive = printed["_aws"]["CloudWatchMetrics"][0]
    spec = resources("AWS::ApplicationAutoScaling::ScalingPolicy")["SessionsPerHostScaling"][
        "TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert spec["Namespace"] == directive["Namespace"] == MetricsSettings().namespace
    assert spec["MetricName"] == "Sessions" and {"Name": "Sessions", "Unit": "Count"} in directive["Metrics"]
    assert [d["Name"] for d in spec["Dimensions"]] == directive["Dimensions"][0] == ["ServiceName"]
    assert spec["Dimensions"][0]["Value"] == {"Fn::Sub": printed["ServiceName"]} and spec["Statistic"] == "Average"
    tf_spec = terraform()["resource"]["aws_appautoscaling_policy"]["sessions_per_host"][
        "target_tracking_scaling_policy_configuration"]["customized_metric_specification"]
    assert (tf_spec["namespace"], tf_spec["metric_name"], tf_spec["statistic"]) == (spec["Namespace"], "Sessions", "Average")


def test_tasks_may_protect_themselves_and_nothing_more() -> None:
    role = resources("AWS::IAM::Role")["TaskRole"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert [s["Action"] for s in statements] == [["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"]]
    assert "task/claude-agent-${Stage}-sandbox/*" in statements[0]["Resource"]["Fn::Sub"]
    assert resources("AWS::ECS::Cluster")["Cluster"]["ClusterName"] == {"Fn::Sub": "claude-agent-${Stage}-sandbox"}


def test_both_templates_hold_the_same_parts() -> None:
    """The Terraform module is the CloudFormation stack's equivalent: each kind of resource has its counterpart."""
    counterparts = {
        "AWS::EC2::SecurityGroup": "aws_security_group", "AWS::ECS::Cluster": "aws_ecs_cluster",
        "AWS::EC2::LaunchTemplate": "aws_launch_template", "AWS::AutoScaling::AutoScalingGroup": "aws_autoscaling_group",
        "AWS::ECS::CapacityProvider": "aws_ecs_capacity_provider",
        "AWS::ECS::ClusterCapacityProviderAssociations": "aws_ecs_cluster_capacity_providers",
        "AWS::IAM::InstanceProfile": "aws_iam_instance_profile", "AWS::IAM::Role": "aws_iam_role",
        "AWS::KMS::Key": "aws_kms_key", "AWS::Logs::LogGroup": "aws_cloudwatch_log_group",
        "AWS::Logs::MetricFilter": "aws_cloudwatch_log_metric_filter", "AWS::ECS::TaskDefinition": "aws_ecs_task_definition",
        "AWS::ServiceDiscovery::HttpNamespace": "aws_service_discovery_http_namespace",
        "AWS::ServiceDiscovery::Service": "aws_service_discovery_service", "AWS::ECS::Service": "aws_ecs_service",
        "AWS::ApplicationAutoScaling::ScalableTarget": "aws_appautoscaling_target",
        "AWS::ApplicationAutoScaling::ScalingPolicy": "aws_appautoscaling_policy",
        "AWS::CloudWatch::Alarm": "aws_cloudwatch_metric_alarm", "AWS::EC2::SecurityGroupEgress": "aws_vpc_security_group_egress_rule",
    }
    kinds: dict[str, int] = {}
    for resource in cfn()["Resources"].values():
        kinds[resource["Type"]] = kinds.get(resource["Type"], 0) + 1
    tf = terraform()["resource"]
    assert set(kinds) <= set(counterparts), set(kinds) - set(counterparts)
    for kind, count in kinds.items():
        if kind != "AWS::EC2::SecurityGroupEgress":  # CloudFormation states most rules inline
            assert len(tf[counterparts[kind]]) == count, kind
    assert {name for name in cfn()["Outputs"]} >= {"SandboxUrl", "LambdaSecurityGroupId", "SubnetIds", "VpcId"}
    assert set(terraform()["output"]) >= {"sandbox_url", "lambda_security_group_id", "subnet_ids", "vpc_id"}
