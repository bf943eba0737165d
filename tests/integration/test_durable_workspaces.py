"""A session outlives its sandbox host: two sandbox hosts as their own processes, SANDBOX_URL
listing both, storage on moto server, the websocket handlers as Lambda invocations, the real
agent loop against the fake Messages API.

The session lands on the only host that answers; the agent writes a file; that host is
SIGKILLed and the other started; the next message finds the file (restored from the snapshot)
and the skills. Then the same after a host restart that lost its disk, after idle reaping, and
after a drain.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.api import make_api
from tests.support.lambda_ws import FakeManagementClient, lambda_harness, ws_event
from tests.support.sandbox_host import HostProcess, free_port
from tests.support.snapshots import snapshot_files

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

READ_BACK = "cat /workspace/out/result.txt; ls /workspace/.claude/skills"


def turn(client: Any, management: FakeManagementClient, fake: Any, dispatcher: Any, command: str) -> list[dict[str, Any]]:
    """One message whose reply runs `command` with the bash tool; the frames it produced."""
    management.sent.clear()
    fake.script(Reply([ToolUse("bash", {"command": command})]), Reply([Text("done")]))
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go"})))
    frames = management.wait_for("c1", "result", timeout=60)
    dispatcher.join(60)
    return frames


def tool_output(frames: list[dict[str, Any]]) -> str:
    return "".join(str(f["content"]) for f in frames if f["event"] == "tool_result")


def statuses(frames: list[dict[str, Any]]) -> list[str]:
    return [f["status"] for f in frames if f["event"] == "status"]


def record(api: Any) -> dict[str, Any]:
    return json.loads(api.raw("sessions/dur/session.json"))


def test_a_session_outlives_its_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    api = make_api("s3", tmp_path, monkeypatch, moto_endpoint)
    token = "fleet-token"
    first = HostProcess(free_port(), tmp_path / "host1", token)
    second = HostProcess(free_port(), tmp_path / "host2", token, SANDBOX_IDLE_TIMEOUT="2", SANDBOX_REAP_INTERVAL="0.5")
    monkeypatch.setenv("SANDBOX_URL", f"{first.url},{second.url}")
    monkeypatch.setenv("SANDBOX_TOKEN", token)
    monkeypatch.setenv("TURN_POLL_SECONDS", "3600")
    first.start()  # the second host is down at setup
    try:
        with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
            assert api.post("/users/alice/skills", {"name": "notes.md", "content": "# Notes\n\nRead me."}).status_code == 200
            setup = client.http.post("/setup/dur?userId=alice")
            assert setup.status_code == 200, setup.body
            assert record(api)["sandboxHost"] == first.url
            assert first.call("GET", "/health").json()["sessions"] == 1
            token_ = json.loads(setup.body)["token"]
            client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "dur", "token": token_}))

            wrote = turn(client, management, fake, dispatcher, "mkdir -p out && echo durable-42 > out/result.txt && echo ok")
            assert "ok" in tool_output(wrote) and "sandbox_recreated" not in statuses(wrote)
            assert "sessions/dur/workspace/alice.manifest.json" in api.keys()

            # 1. The first host dies; the second comes up. The session moves, files and skills intact.
            first.kill()
            second.start()
            moved = turn(client, management, fake, dispatcher, READ_BACK)
            assert "sandbox_recreated" in statuses(moved)
            assert "durable-42" in tool_output(moved) and "notes.md" in tool_output(moved)
            assert record(api)["sandboxHost"] == second.url

            # 2. The host restarts and lost its disk.
            second.kill()
            second.lose_disk()
            second.start()
            restarted = turn(client, management, fake, dispatcher, READ_BACK)
            assert "sandbox_recreated" in statuses(restarted)
            assert "durable-42" in tool_output(restarted) and "notes.md" in tool_output(restarted)

            # 3. The session idles past SANDBOX_IDLE_TIMEOUT and is reaped.
            deadline = time.monotonic() + 30
            while second.call("GET", "/health").json()["sessions"] != 0:  # /health does not count as use
                assert time.monotonic() < deadline, "the idle session was not reaped"
                time.sleep(0.2)
            reaped = turn(client, management, fake, dispatcher, READ_BACK)
            assert "sandbox_recreated" in statuses(reaped)
            assert "durable-42" in tool_output(reaped) and "notes.md" in tool_output(reaped)

            # 4. The second host drains: the session moves back to the first at its next turn.
            turn(client, management, fake, dispatcher, "echo drained-edit >> out/result.txt")
            first.start()
            assert second.call("POST", "/admin/drain", json={"draining": True}).json()["draining"] is True
            assert second.call("GET", "/health").json()["draining"] is True
            drained = turn(client, management, fake, dispatcher, READ_BACK)
            assert "sandbox_recreated" in statuses(drained)
            assert "durable-42\ndrained-edit" in tool_output(drained)
            assert record(api)["sandboxHost"] == first.url
            assert second.call("GET", "/sessions/dur").status_code == 404  # the old sandbox was ended
    finally:
        first.stop()
        second.stop()
        first.release_mounts()
        second.release_mounts()


def test_a_burst_of_turns_writes_the_snapshot_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    """Three messages sent together: each turn changes a file, the snapshot is written once, after the last."""
    import os
    from collections import Counter

    from chalicelib.config import Settings
    from chalicelib.container import get_container
    from tests.support.api import ROOT

    api = make_api("s3", tmp_path, monkeypatch, moto_endpoint)
    monkeypatch.setenv("TURN_POLL_SECONDS", "0.05")  # the running turn sees the queue behind it
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        store = get_container(Settings.from_env({**os.environ, **stage_env})).store
        puts: Counter[str] = Counter()

        def count(params: dict[str, Any], model: Any, **_: Any) -> None:
            if model.name == "PutObject" and params["Key"].endswith("workspace/alice.manifest.json"):
                puts["snapshot"] += 1

        store.client.meta.events.register("before-parameter-build.s3", count)  # type: ignore[attr-defined]
        setup = client.http.post("/setup/burst?userId=alice")
        assert setup.status_code == 200, setup.body
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "burst", "token": json.loads(setup.body)["token"]}))
        fake.script(*[reply for n in range(3) for reply in (
            Reply([ToolUse("bash", {"command": f"echo {n} >> burst.txt"})], delay=0.05 if n else 0.4), Reply([Text("done")]))])
        for _ in range(3):
            client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go"})))
        deadline = time.monotonic() + 60
        while sum(f["event"] == "result" for f in management.sent.get("c1", [])) < 3:
            assert time.monotonic() < deadline, "three results did not arrive"
            time.sleep(0.05)
        dispatcher.join(60)
        assert puts["snapshot"] == 1
        assert snapshot_files(api.raw, "burst", "alice")["burst.txt"] == b"0\n1\n2\n"
