"""The fault proxy itself: each rule does what it says, seen through a real botocore client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from tests.support.fault_proxy import FaultProxy, FaultRule
from tests.support.s3 import create_bucket, storage_settings


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


def _client(url: str, read_timeout: float = 5) -> object:
    return boto3.client(
        "s3", endpoint_url=url, region_name="auto", aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=read_timeout, connect_timeout=2,
                      s3={"addressing_style": "path"}),
    )


@pytest.fixture
def bucket(moto_endpoint: str) -> tuple[str, object]:
    name = f"proxy-{uuid.uuid4().hex[:10]}"
    direct = create_bucket(storage_settings(moto_endpoint, name))
    return name, direct


def _exists(direct: object, bucket: str, key: str) -> bool:
    try:
        direct.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
        return True
    except ClientError:
        return False


def test_forwards_when_no_rule_fires(proxy: FaultProxy, bucket: tuple[str, object]) -> None:
    name, direct = bucket
    client = _client(proxy.url)
    client.put_object(Bucket=name, Key="a.txt", Body=b"hello")  # type: ignore[attr-defined]
    assert client.get_object(Bucket=name, Key="a.txt")["Body"].read() == b"hello"  # type: ignore[attr-defined]
    assert client.head_object(Bucket=name, Key="a.txt")["ContentLength"] == 5  # type: ignore[attr-defined]
    assert proxy.fired() == 0 and len(proxy.seen()) == 3


def test_status_rule_answers_slowdown_and_applies_nothing(proxy: FaultProxy, bucket: tuple[str, object]) -> None:
    name, direct = bucket
    proxy.add(FaultRule("PUT", "/b.txt", action="status", status=503))
    with pytest.raises(ClientError) as raised:
        _client(proxy.url).put_object(Bucket=name, Key="b.txt", Body=b"x")  # type: ignore[attr-defined]
    assert raised.value.response["Error"]["Code"] == "SlowDown"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert not _exists(direct, name, "b.txt")
    assert proxy.fired("status") == 1


def test_drop_before_applies_nothing(proxy: FaultProxy, bucket: tuple[str, object]) -> None:
    name, direct = bucket
    proxy.add(FaultRule("PUT", "/c.txt", action="drop_before"))
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        _client(proxy.url).put_object(Bucket=name, Key="c.txt", Body=b"x")  # type: ignore[attr-defined]
    assert not _exists(direct, name, "c.txt")


def test_drop_after_applies_the_request_and_loses_the_answer(proxy: FaultProxy, bucket: tuple[str, object]) -> None:
    name, direct = bucket
    proxy.add(FaultRule("PUT", "/d.txt", action="drop_after"))
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        _client(proxy.url).put_object(Bucket=name, Key="d.txt", Body=b"applied")  # type: ignore[attr-defined]
    assert direct.get_object(Bucket=name, Key="d.txt")["Body"].read() == b"applied"  # type: ignore[attr-defined]
    # One firing only: the next identical request goes through.
    _client(proxy.url).put_object(Bucket=name, Key="d.txt", Body=b"again")  # type: ignore[attr-defined]
    assert proxy.fired("drop_after") == 1


def test_hang_rule_holds_the_answer_until_the_client_gives_up(proxy: FaultProxy, bucket: tuple[str, object]) -> None:
    name, direct = bucket
    direct.put_object(Bucket=name, Key="e.txt", Body=b"x")  # type: ignore[attr-defined]
    proxy.add(FaultRule("GET", "/e.txt", action="hang", seconds=20, times=None))
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        _client(proxy.url, read_timeout=0.5).get_object(Bucket=name, Key="e.txt")  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
    proxy.clear()  # ends the hang in progress; later requests pass
    assert _client(proxy.url).get_object(Bucket=name, Key="e.txt")["Body"].read() == b"x"  # type: ignore[attr-defined]


def test_skip_and_times_count_matching_requests(proxy: FaultProxy, bucket: tuple[str, object]) -> None:
    name, _ = bucket
    proxy.add(FaultRule("PUT", "/f.txt", action="status", status=500, skip=1, times=2))
    client = _client(proxy.url)
    outcomes = []
    for _ in range(4):
        try:
            client.put_object(Bucket=name, Key="f.txt", Body=b"x")  # type: ignore[attr-defined]
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])
    assert outcomes == ["ok", "InternalError", "InternalError", "ok"]
