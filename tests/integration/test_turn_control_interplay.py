"""Where the turn runner's leases and recovery (issue 11) meet permission prompts (issue 14):
handlers as Lambda invocations, the runner in its own thread, storage shared.

- a permission wait longer than the lease keeps its turn (the lease is renewed while it waits);
- a runner killed while waiting for an answer leaves no request behind that a `permission`
  frame could still "answer", and the client is told the request ended;
- a storage outage when the request is opened, or when the turn reads the user's settings
  (permissions, budget), is ridden out like the turn's other storage calls.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.agent.permissions import PendingPermission
from chalicelib.realtime.state import SessionState, utcnow
from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.integration.test_turn_takeover import frames_of, stage_dead_runner
from tests.support.api import make_api
from tests.support.fault_proxy import FaultProxy, FaultRule
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_LEASE_SECONDS", "2")  # renewed every 0.67 s
    monkeypatch.setenv("TURN_POLL_SECONDS", "0.2")
    monkeypatch.setenv("PERMISSION_TIMEOUT_SECONDS", "60")


@pytest.fixture
def faulty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, short_lease: None) -> Iterator[tuple[Any, ...]]:
    with FaultProxy(moto_endpoint) as proxy:
        api = make_api("s3", tmp_path, monkeypatch, proxy.url)
        assert api.send("PUT", "/users/alice/settings", {"permissions": {"bash": "ask"}}).status_code == 200
        with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
            yield client, management, fake, dispatcher, proxy, api


def send(client: Any, frame: dict[str, Any]) -> None:
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps(frame)))


def test_a_permission_wait_longer_than_the_lease_keeps_its_turn(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "pl1")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "pl1", "token": token}))
    fake.script(Reply([ToolUse("bash", {"command": "echo approved-and-ran"})]), Reply([Text("done")]), Reply([Text("second done")]))
    send(client, {"action": "message", "prompt": "go"})
    request = management.wait_for("c1", "permission_request")[-1]
    time.sleep(3.5)  # well past the 2 s lease: only renewals keep the turn
    state = json.loads(api.raw("sessions/pl1/state.json"))
    assert state["pendingPermission"]["toolUseId"] == request["toolUseId"]
    lease_left = (SessionState.model_validate(state).turn.lease_until - utcnow()).total_seconds()  # type: ignore[union-attr,operator]
    # A message now starts a runner if the waiting one looks dead; it must find the lease alive.
    send(client, {"action": "message", "prompt": "second"})
    time.sleep(1.0)
    send(client, {"action": "permission", "toolUseId": request["toolUseId"], "decision": "allow"})
    frames = frames_of(management, "c1", lambda fs: sum(f["event"] == "result" for f in fs) == 2, timeout=60)
    dispatcher.join(30)
    print(f"\npermission wait of 5 s under a 2 s lease: {lease_left:.1f} s of lease left after 3.5 s")
    assert lease_left > 0
    assert not [f for f in frames if f["event"] == "error"], frames
    assert next(f for f in frames if f["event"] == "tool_result")["content"].strip() == "approved-and-ran"
    assert [f["stopReason"] for f in frames if f["event"] == "result"] == ["end_turn", "end_turn"]
    assert len(fake.requests) == 3  # nothing ran twice
    seqs = [f["seq"] for f in frames if f["seq"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_runner_killed_while_waiting_for_permission_leaves_no_request_to_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "pk1")
        stage_dead_runner(tmp_path / "data", "pk1", lease_left=-1)
        # The dead runner had asked about its bash call and was waiting for the answer.
        path = tmp_path / "data/sessions/pk1/state.json"
        state = SessionState.model_validate_json(path.read_bytes())
        state.pending_permission = PendingPermission(tool_use_id="toolu_dead", name="bash", input={"command": "sleep 99"},
                                                     turn_id="t-dead", asked_at=utcnow())
        path.write_bytes(state.model_dump_json(by_alias=True).encode())
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "pk1", "token": token}))
        send(client, {"action": "resume", "afterSeq": 58})
        frames = frames_of(management, "c1", lambda fs: any(f["event"] == "result" for f in fs))
        dispatcher.join(30)
        resolved = [f for f in frames if f["event"] == "permission_resolved"]
        assert [(f["toolUseId"], f["decision"], f["reason"]) for f in resolved] == [("toolu_dead", "deny", "turn_cut_off")]
        assert resolved[0]["seq"] > 10_003  # numbered above the dead runner's high-water mark
        assert SessionState.model_validate_json(path.read_bytes()).pending_permission is None
        # An answer arriving now is refused: nothing waits for it any more.
        management.sent.clear()
        send(client, {"action": "permission", "toolUseId": "toolu_dead", "decision": "allow"})
        late = management.wait_for("c1", "error")[-1]
    assert late["code"] == "no_pending_permission" and late["seq"] == 0
    assert fake.requests == []


def test_a_storage_outage_while_opening_a_permission_request_is_ridden_out(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "ps1")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "ps1", "token": token}))
    fake.script(Reply([ToolUse("bash", {"command": "echo approved-and-ran"})]), Reply([Text("done")]))
    # The write that opens the request fails 5 times: botocore's 4 attempts, then 1 more.
    proxy.add(FaultRule("PUT", r"/state\.json", action="status", status=503, times=5, body=r'"pendingPermission":\{'))
    send(client, {"action": "message", "prompt": "go"})
    request = management.wait_for("c1", "permission_request", timeout=30)[-1]
    send(client, {"action": "permission", "toolUseId": request["toolUseId"], "decision": "allow"})
    frames = management.wait_for("c1", "result", timeout=60)
    dispatcher.join(30)
    assert proxy.fired("status") == 5
    assert not [f for f in frames if f["event"] == "error"], frames
    assert next(f for f in frames if f["event"] == "tool_result")["content"].strip() == "approved-and-ran"
    assert frames[-1]["stopReason"] == "end_turn"


def test_a_storage_outage_while_reading_the_settings_at_turn_start_is_ridden_out(faulty) -> None:  # type: ignore[no-untyped-def]
    # The turn reads the user's settings (permissions, budget, server tools) before its first
    # model call: the same outage the runner's writes ride out must not end the turn there.
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "ps2")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "ps2", "token": token}))
    fake.script(Reply([Text("Settings read after the outage.")]))
    proxy.add(FaultRule("GET", r"/users/alice/settings/", action="status", status=503, times=5))
    send(client, {"action": "message", "prompt": "go"})
    frames = management.wait_for("c1", "result", timeout=60)
    dispatcher.join(30)
    assert proxy.fired("status") == 5
    assert not [f for f in frames if f["event"] == "error"], frames
    assert frames[-1]["stopReason"] == "end_turn"
