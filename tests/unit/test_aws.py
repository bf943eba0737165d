"""The app's AWS clients, on botocore alone: what a boto3 Session gave, and the local gateway's
redirection of the management API and Lambda clients."""

from __future__ import annotations

import pytest

from chalicelib import aws
from chalicelib.aws import LOCAL_REGION, AwsSession


@pytest.fixture(autouse=True)
def no_aws_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "LOCAL_GATEWAY_URL", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))


def test_region_comes_from_the_environment_when_first_used(monkeypatch: pytest.MonkeyPatch) -> None:
    session = AwsSession()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")  # botocore's (and boto3's) variable; Lambda sets it
    assert session.region_name == "eu-west-3"
    assert session.client("s3").meta.region_name == "eu-west-3"


def test_under_the_local_gateway_a_missing_region_is_supplied(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AwsSession().region_name is None
    monkeypatch.setenv("LOCAL_GATEWAY_URL", "http://127.0.0.1:8000")
    assert AwsSession().region_name == LOCAL_REGION


def test_gateway_bound_clients_reach_the_gateway_and_storage_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_GATEWAY_URL", "http://127.0.0.1:8000/")
    session = AwsSession()
    management = session.client("apigatewaymanagementapi", endpoint_url="https://abc.execute-api.us-east-1.amazonaws.com/api")
    assert management.meta.endpoint_url == "http://127.0.0.1:8000/api"  # the stage's path is kept
    assert session.client("lambda").meta.endpoint_url == "http://127.0.0.1:8000"
    storage = session.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1")
    assert storage.meta.endpoint_url == "http://127.0.0.1:9000"


def test_calls_to_the_gateway_carry_its_secret_and_calls_to_aws_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    sent: list[tuple[str, bytes | None]] = []

    def record(request, **_):  # type: ignore[no-untyped-def]
        sent.append((request.url, request.headers.get(aws.LOCAL_GATEWAY_SECRET_HEADER)))
        raise RuntimeError("not sent")  # stop before the network

    monkeypatch.setattr(aws, "_local_gateway_secret", "s3cret")
    to_aws = AwsSession().client("lambda", region_name="us-east-1")
    monkeypatch.setenv("LOCAL_GATEWAY_URL", "http://127.0.0.1:8000")
    to_gateway = AwsSession().client("lambda")
    for client in (to_aws, to_gateway):
        client.meta.events.register("before-send.lambda", record)
        with pytest.raises(RuntimeError, match="not sent"):
            client.invoke(FunctionName="turn_runner", InvocationType="Event", Payload=b"{}")
    assert sent[0] == ("https://lambda.us-east-1.amazonaws.com/2015-03-31/functions/turn_runner/invocations", None)
    assert sent[1] == ("http://127.0.0.1:8000/2015-03-31/functions/turn_runner/invocations", b"s3cret")


def test_sessions_share_one_parsed_copy_of_botocore_data() -> None:
    """Each new botocore session would parse S3's model and endpoint rules again (~20 ms)."""
    first, second = AwsSession(), AwsSession()
    first.client("s3", region_name="us-east-1")
    assert first._botocore().get_component("data_loader") is second._botocore().get_component("data_loader")
