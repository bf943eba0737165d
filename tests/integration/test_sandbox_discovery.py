"""SANDBOX_URL=cloudmap://<namespace>/<service>: the fleet finds its hosts in Cloud Map (moto's
servicediscovery over HTTP on loopback) and runs them as real `python -m sandbox_host` processes.
Hosts register, deregister, die and join while sessions run; placement, moves and drain behave as
with a fixed list, and Cloud Map's answer is reused for at most 10 s."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from chalicelib.config import SandboxSettings, Settings
from chalicelib.sandbox.base import SandboxGone, SandboxOptions, SandboxUnavailable
from chalicelib.sandbox.discovery import CloudMapHosts, CloudMapService, build_host_directory
from chalicelib.sandbox.factory import build_sandbox_provider
from chalicelib.sandbox.fleet import FleetSandboxProvider
from tests.support.s3 import moto_server
from tests.support.sandbox_host import HostProcess, free_port

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

AWS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class CloudMap:
    """One HTTP namespace and service in moto's Cloud Map; registers hosts as ECS would."""

    def __init__(self, endpoint: str) -> None:
        # DiscoverInstances' `data-` host prefix cannot resolve against 127.0.0.1.
        self.client = boto3.client("servicediscovery", endpoint_url=endpoint, config=Config(inject_host_prefix=False), **AWS)
        self.namespace = f"sbx-{uuid.uuid4().hex[:8]}.internal"
        self.client.create_http_namespace(Name=self.namespace)
        namespace_id = next(n["Id"] for n in self.client.list_namespaces()["Namespaces"] if n["Name"] == self.namespace)
        self.service_id = self.client.create_service(Name="sandbox-hosts", NamespaceId=namespace_id,
                                                     HealthCheckCustomConfig={"FailureThreshold": 1})["Service"]["Id"]

    @property
    def url(self) -> str:
        return f"cloudmap://{self.namespace}/sandbox-hosts"

    def register(self, host: HostProcess) -> None:
        self.client.register_instance(ServiceId=self.service_id, InstanceId=f"task-{host.port}",
                                      Attributes={"AWS_INSTANCE_IPV4": "127.0.0.1", "AWS_INSTANCE_PORT": str(host.port)})

    def deregister(self, host: HostProcess) -> None:
        self.client.deregister_instance(ServiceId=self.service_id, InstanceId=f"task-{host.port}")

    def set_health(self, host: HostProcess, status: str) -> None:
        self.client.update_instance_custom_health_status(ServiceId=self.service_id, InstanceId=f"task-{host.port}",
                                                         Status=status)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[HostProcess]]:
    made = [HostProcess(free_port(), tmp_path / f"host{i}", "fleet-token") for i in range(3)]
    try:
        yield made
    finally:
        for host in made:
            host.stop()
            host.release_mounts()


def test_hosts_register_deregister_die_and_join_while_sessions_run(moto_endpoint: str, hosts: list[HostProcess]) -> None:
    cloud_map = CloudMap(moto_endpoint)
    a, b, c = hosts
    for host in (a, b):
        host.start()
        cloud_map.register(host)
    clock = Clock()
    calls: list[str] = []

    def client() -> Any:
        built = boto3.client("servicediscovery", endpoint_url=moto_endpoint, config=Config(inject_host_prefix=False), **AWS)
        built.meta.events.register("before-call.servicediscovery.DiscoverInstances", lambda **_: calls.append("discover"))
        return built

    directory = CloudMapHosts(CloudMapService.parse(cloud_map.url), client, clock=clock)
    settings = Settings.from_env({"SANDBOX_URL": cloud_map.url, "SANDBOX_TOKEN": "fleet-token"})
    placed: dict[str, str] = {}
    fleet = FleetSandboxProvider(settings, resolve_host=placed.get, directory=directory)

    def create(sid: str) -> str:
        placed[sid] = fleet.create(sid, SandboxOptions()).host
        return placed[sid]

    assert [create("s1"), create("s2")] == [a.url, b.url]  # fewest sessions wins
    assert calls == ["discover"]  # one answer serves every call within 10 s

    # A host joins while s1 and s2 run: seen once the cached answer is 10 s old, and preferred (empty).
    c.start()
    cloud_map.register(c)
    clock.now += 9.9
    assert c.url not in fleet.hosts
    clock.now += 0.1
    assert set(fleet.hosts) == {a.url, b.url, c.url} and calls == ["discover"] * 2
    assert create("s3") == c.url
    assert fleet.get("s1").exec("echo still here").stdout == "still here\n"

    # b is deregistered (ECS stopping its task) while still running: s2 moves, its old sandbox ends.
    cloud_map.deregister(b)
    clock.now += 10
    with pytest.raises(SandboxGone, match="no sandbox host"):
        fleet.get("s2")
    assert create("s2") == a.url
    assert b.call("GET", "/health").json()["sessions"] == 0
    assert fleet.get("s2").exec("echo moved").stdout == "moved\n"

    # a dies (SIGKILL) and is still registered: its sessions move to the live host.
    a.kill()
    with pytest.raises(SandboxGone, match="does not answer"):
        fleet.get("s1")
    assert create("s1") == c.url
    report = {h.url: h for h in fleet.health()}
    assert not report[a.url].up and report[c.url].sessions == 2

    # Cloud Map calls c unhealthy: it keeps serving its sessions but gets no new one.
    cloud_map.set_health(c, "UNHEALTHY")
    clock.now += 10
    assert fleet.get("s1").exec("echo served").stdout == "served\n"
    with pytest.raises(SandboxUnavailable) as refused:
        fleet.create("s4", SandboxOptions())
    assert f"{c.url}: unhealthy in Cloud Map" in str(refused.value) and f"{a.url}: no answer" in str(refused.value)

    # Drain works as with a list: healthy again, c drains, and its session moves to a fresh host.
    cloud_map.set_health(c, "HEALTHY")
    a.start()  # a replacement on the same address
    clock.now += 10
    assert c.call("POST", "/admin/drain", json={"draining": True}).json()["draining"] is True
    with pytest.raises(SandboxGone, match="draining"):
        fleet.get("s3")
    assert create("s3") == a.url


def test_the_app_finds_cloud_map_through_its_configured_endpoint(moto_endpoint: str, hosts: list[HostProcess],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """As the Lambda builds it: SANDBOX_URL alone, the AWS session's credentials and region, and the
    endpoint botocore reads from AWS_ENDPOINT_URL_SERVICEDISCOVERY (a VPC endpoint; here moto)."""
    cloud_map = CloudMap(moto_endpoint)
    host = hosts[0].start()
    cloud_map.register(host)
    for name, value in {"AWS_ENDPOINT_URL_SERVICEDISCOVERY": moto_endpoint, "AWS_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    fleet = build_sandbox_provider(Settings.from_env({"SANDBOX_URL": cloud_map.url, "SANDBOX_TOKEN": "fleet-token"}))
    assert isinstance(fleet, FleetSandboxProvider)
    assert fleet.create("e1", SandboxOptions()).exec("echo found").stdout == "found\n"


def test_cloud_map_unreachable_names_the_service_then_the_last_answer_stands(hosts: list[HostProcess]) -> None:
    clock = Clock()
    refused = CloudMapHosts(CloudMapService.parse("cloudmap://sbx.internal/hosts"), lambda: boto3.client(
        "servicediscovery", endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}, connect_timeout=1), **AWS))
    with pytest.raises(SandboxUnavailable, match="cloudmap://sbx.internal/hosts"):
        refused.hosts()

    with moto_server() as endpoint:
        cloud_map = CloudMap(endpoint)
        host = hosts[0].start()
        cloud_map.register(host)
        directory = CloudMapHosts(CloudMapService.parse(cloud_map.url), lambda: boto3.client(
            "servicediscovery", endpoint_url=endpoint,
            config=Config(inject_host_prefix=False, retries={"max_attempts": 1}, connect_timeout=1), **AWS), clock=clock)
        assert directory.hosts() == {host.url: True}
    clock.now += 60  # Cloud Map is gone: the hosts it last listed keep their sessions
    assert directory.hosts() == {host.url: True}


@pytest.mark.parametrize("url", ["cloudmap://", "cloudmap://ns", "cloudmap://ns/", "cloudmap://ns/a/b", "cloudmap://ns/svc?x=1"])
def test_a_malformed_cloud_map_url_is_refused_with_the_expected_form(url: str) -> None:
    with pytest.raises(SandboxUnavailable, match="cloudmap://<namespace>/<service>"):
        build_host_directory(SandboxSettings(url=url))


def test_a_list_still_names_the_hosts() -> None:
    listed = build_host_directory(SandboxSettings(url=" http://a:8080/ , http://b:8080"))
    assert listed.hosts() == {"http://a:8080": True, "http://b:8080": True}
    with pytest.raises(SandboxUnavailable, match="lists no sandbox host"):
        build_host_directory(SandboxSettings(url=" , "))
