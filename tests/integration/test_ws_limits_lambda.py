"""WS_FRAMES_PER_SECOND and WS_CONNECTIONS_PER_SESSION through the Lambda websocket handlers
(chalice.test's Lambda invocations, a fake management API): the connection count lives in the
session state, so it holds across Lambdas, and connections gone without a $disconnect (the
management API says Gone) are not counted. A `clear` during a turn is answered at once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chalice.test import Client

from chalicelib.realtime.dispatch import ThreadDispatcher
from tests.fakes.fake_anthropic import Endless, FakeAnthropic
from tests.support.lambda_ws import FakeManagementClient, lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Client, FakeManagementClient, FakeAnthropic, ThreadDispatcher]]:
    monkeypatch.setenv("WS_CONNECTIONS_PER_SESSION", "2")
    monkeypatch.setenv("WS_FRAMES_PER_SECOND", "5")
    with lambda_harness(tmp_path, monkeypatch) as parts:
        yield parts


def _connect(client: Client, connection: str, session: str, token: str) -> dict:  # type: ignore[type-arg]
    return client.lambda_.invoke("ws_connect", ws_event("$connect", connection, query={"sessionId": session, "token": token})).payload


def test_the_connection_past_the_cap_is_refused_until_one_goes(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, _, _ = harness
    token = setup_session(client, "cap1")
    assert _connect(client, "k1", "cap1", token)["statusCode"] == 200
    assert _connect(client, "k2", "cap1", token)["statusCode"] == 200
    refused = _connect(client, "k3", "cap1", token)
    assert refused["statusCode"] == 429
    assert json.loads(refused["body"])["code"] == "too_many_connections"
    assert _connect(client, "k2", "cap1", token)["statusCode"] == 200  # a repeated $connect is not a new one
    management.gone.add("k1")  # vanished without a $disconnect (a killed server, a lost network)
    assert _connect(client, "k3", "cap1", token)["statusCode"] == 200
    assert _connect(client, "k4", "cap1", token)["statusCode"] == 429
    client.lambda_.invoke("ws_disconnect", ws_event("$disconnect", "k2"))
    assert _connect(client, "k4", "cap1", token)["statusCode"] == 200


def test_a_frame_flood_is_refused_then_closed(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, _, _ = harness
    token = setup_session(client, "flood1")
    _connect(client, "f1", "flood1", token)
    for _ in range(60):
        if "f1" in management.closed:
            break
        client.lambda_.invoke("ws_message", ws_event("$default", "f1", json.dumps({"action": "get_history"})))
    sent = management.sent["f1"]
    assert 5 <= sum(1 for f in sent if f["event"] == "history") <= 10  # the burst, and what refilled meanwhile
    assert {f["code"] for f in sent if f["event"] == "error"} == {"frame_rate_exceeded"}
    assert management.closed == ["f1"]


def test_a_clear_during_a_turn_is_answered_at_once_and_done_at_its_end(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher = harness
    token = setup_session(client, "clr1")
    _connect(client, "g1", "clr1", token)
    fake.script(Endless(delta="word ", delay=0.05, max_deltas=400))
    client.lambda_.invoke("ws_message", ws_event("$default", "g1", json.dumps({"action": "message", "prompt": "talk"})))
    management.wait_for("g1", "stream")
    client.lambda_.invoke("ws_message", ws_event("$default", "g1", json.dumps({"action": "clear"})))
    assert any(f.get("status") == "clearing" for f in management.sent["g1"])
    client.lambda_.invoke("ws_message", ws_event("$default", "g1", json.dumps({"action": "interrupt"})))
    frames = management.wait_for("g1", "cleared")
    ended = next(i for i, f in enumerate(frames) if f["event"] == "result")
    assert frames[ended]["interrupted"] and any(f["event"] == "cleared" for f in frames[ended:])
    dispatcher.join(30)
    saved = json.loads(client.http.get("/users/alice/conversations/clr1").body)["conversation"]["messages"]
    assert saved == []
