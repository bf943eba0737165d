"""A sandbox host on ECS: it holds task scale-in protection (through the ECS agent's endpoint, a
faithful fake on loopback) exactly while it has sessions, and reports sessions, busy sessions and
capacity as CloudWatch embedded-metric-format lines on stdout."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_host.metrics import MetricsSettings, emf_line
from sandbox_host.operations import OperationsSettings
from sandbox_host.task_protection import ProtectionSettings, TaskProtection
from tests.fakes.fake_ecs_agent import FakeEcsAgent, running_ecs_agent
from tests.support.sandbox_host import HostProcess, free_port

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def metric_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{") and '"_aws"' in line]


def assert_valid_emf(document: dict[str, Any]) -> None:
    """What CloudWatch needs to extract the metrics (EMF specification): a millisecond timestamp,
    each metric and each dimension key present as a top-level member, values numeric."""
    meta = document["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_600_000_000_000
    for directive in meta["CloudWatchMetrics"]:
        assert directive["Namespace"] and "Dimensions" in directive
        for dimension_set in directive["Dimensions"]:
            assert all(isinstance(document[key], str) for key in dimension_set)
        for metric in directive["Metrics"]:
            assert isinstance(document[metric["Name"]], int) and metric["Unit"] == "Count"


@pytest.fixture
def agent() -> Iterator[tuple[FakeEcsAgent, str]]:
    with running_ecs_agent() as running:
        yield running


@needs_bwrap
def test_protection_follows_the_sessions_and_metrics_report_them(tmp_path: Path, agent: tuple[FakeEcsAgent, str]) -> None:
    fake, uri = agent
    out = tmp_path / "stdout"
    host = HostProcess(free_port(), tmp_path / "host", "ops-token", stdout=out, ECS_AGENT_URI=uri,
                       SANDBOX_METRICS_INTERVAL="0.2", SANDBOX_HOST_CAPACITY="40", SANDBOX_METRICS_SERVICE="sbx-prod")
    try:
        host.start()
        eventually(lambda: len(metric_lines(out)) >= 2, "two metrics lines")
        assert fake.requests == []  # an empty host starts unprotected and asks nothing
        first = metric_lines(out)[0]
        assert_valid_emf(first)
        assert first["ServiceName"] == "sbx-prod" and first["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["ServiceName"]]
        assert (first["Sessions"], first["BusySessions"], first["Capacity"]) == (0, 0, 40)

        # The first session is protected before its creator hears of it; the second asks nothing more.
        assert host.call("POST", "/sessions/a", json={}).status_code == 200
        assert fake.enabled and fake.requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 60}]
        assert host.call("POST", "/sessions/b", json={}).status_code == 200
        eventually(lambda: metric_lines(out)[-1]["Sessions"] == 2, "Sessions 2 reported")
        assert len(fake.requests) == 1

        # A command running makes its session busy.
        running = threading.Thread(target=host.call, args=("POST", "/sessions/a/exec"), kwargs={"json": {"command": "sleep 2"}})
        running.start()
        eventually(lambda: metric_lines(out)[-1]["BusySessions"] == 1, "BusySessions 1 while sleep runs")
        running.join(timeout=20)
        eventually(lambda: metric_lines(out)[-1]["BusySessions"] == 0, "BusySessions back to 0")

        # Draining keeps protection while sessions remain; the last one moving away releases it.
        assert host.call("POST", "/admin/drain", json={"draining": True}).status_code == 200
        assert host.call("DELETE", "/sessions/a").status_code == 200
        assert fake.enabled and len(fake.requests) == 1
        assert host.call("DELETE", "/sessions/b").status_code == 200
        assert not fake.enabled and fake.requests[-1] == {"ProtectionEnabled": False}
        eventually(lambda: metric_lines(out)[-1]["Draining"] is True and metric_lines(out)[-1]["Sessions"] == 0,
                   "the drained host reports no session")

        # The agent fails once: the session still runs, and the next round gets the protection.
        assert host.call("POST", "/admin/drain", json={"draining": False}).status_code == 200
        fake.fail_next("server")
        before = len(fake.requests)
        assert host.call("POST", "/sessions/c", json={}).status_code == 200
        eventually(lambda: fake.enabled, "protection retried at the next round")
        assert fake.requests[before:] == [{"ProtectionEnabled": True, "ExpiresInMinutes": 60}] * 2  # refused, then held

        # SIGTERM: the host ends its sessions and lets go.
        assert host.proc is not None
        host.proc.terminate()
        host.proc.wait(timeout=20)
        assert not fake.enabled and fake.requests[-1] == {"ProtectionEnabled": False}
    finally:
        host.stop()
        host.release_mounts()


@needs_bwrap
def test_an_idle_session_reaped_releases_protection(tmp_path: Path, agent: tuple[FakeEcsAgent, str]) -> None:
    fake, uri = agent
    host = HostProcess(free_port(), tmp_path / "host", "ops-token", ECS_AGENT_URI=uri, SANDBOX_IDLE_TIMEOUT="1",
                       SANDBOX_REAP_INTERVAL="0.2", SANDBOX_METRICS_INTERVAL="30")
    try:
        host.start()
        assert host.call("POST", "/sessions/idle", json={}).status_code == 200
        assert fake.enabled
        eventually(lambda: not fake.enabled, "protection released once the idle session is reaped")
        assert host.call("GET", "/health").json()["sessions"] == 0
    finally:
        host.stop()
        host.release_mounts()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_held_grant_is_renewed_at_half_time_and_refusals_change_nothing(agent: tuple[FakeEcsAgent, str]) -> None:
    fake, uri = agent
    clock = Clock()
    protection = TaskProtection(ProtectionSettings(agent_uri=uri, minutes=10), clock=clock)
    assert protection.hold(True) and fake.requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 10}]
    clock.now += 299
    assert protection.hold(True) and len(fake.requests) == 1
    clock.now += 1  # half of 10 minutes
    assert protection.hold(True) and len(fake.requests) == 2

    fake.fail_next("failure")  # ECS refuses (e.g. a task outside a service): still held as before
    assert protection.hold(False) is True and fake.enabled
    assert protection.hold(False) is False and not fake.enabled
    assert protection.hold(False) is False and len(fake.requests) == 4  # nothing to change: nothing sent


def test_outside_ecs_nothing_is_sent() -> None:
    protection = TaskProtection(ProtectionSettings())
    assert not protection.enabled and protection.hold(True) is False


def test_an_unreachable_agent_is_survived() -> None:
    protection = TaskProtection(ProtectionSettings(agent_uri=f"http://127.0.0.1:{free_port()}/api/x"))
    assert protection.hold(True) is False


def test_settings_come_from_the_task_environment_and_bad_values_name_their_variable() -> None:
    settings = OperationsSettings.from_env({"ECS_AGENT_URI": "http://169.254.170.2/api/t", "SANDBOX_HOST_CAPACITY": "80",
                                            "SANDBOX_PROTECTION_MINUTES": "30", "SANDBOX_METRICS_INTERVAL": "15"})
    assert settings.protection == ProtectionSettings(agent_uri="http://169.254.170.2/api/t", minutes=30)
    assert settings.metrics == MetricsSettings(capacity=80, interval_seconds=15)
    assert OperationsSettings.from_env({}) == OperationsSettings()
    for name, value in {"SANDBOX_PROTECTION_MINUTES": "2881", "SANDBOX_HOST_CAPACITY": "0", "SANDBOX_METRICS_INTERVAL": "x"}.items():
        with pytest.raises(SystemExit, match=name):
            OperationsSettings.from_env({name: value})


def test_an_emf_line_is_one_valid_document() -> None:
    line = emf_line(MetricsSettings(), "ip-10-0-1-5", sessions=3, busy=1, draining=False, timestamp_ms=1_765_000_000_000)
    assert "\n" not in line
    document = json.loads(line)
    assert_valid_emf(document)
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ClaudeAgent/SandboxHosts"
    assert (document["Sessions"], document["BusySessions"], document["Host"]) == (3, 1, "ip-10-0-1-5")
