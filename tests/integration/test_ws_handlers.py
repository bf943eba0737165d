"""The websocket handlers as Lambda invocations (chalice.test.Client().lambda_.invoke), with a
fake API Gateway management client, including a client that is gone (GoneException)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chalice.test import Client

from chalicelib.realtime.dispatch import ThreadDispatcher
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text, ToolUse
from tests.support.lambda_ws import FakeManagementClient, lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Client, FakeManagementClient, FakeAnthropic, ThreadDispatcher]]:
    with lambda_harness(tmp_path, monkeypatch) as parts:
        yield parts


def test_connect_message_and_turn_through_the_management_api(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher = harness
    token = setup_session(client, "h1")
    refused = client.lambda_.invoke("ws_connect", ws_event("$connect", "c0", query={"sessionId": "h1", "token": "bad"}))
    assert refused.payload["statusCode"] == 403
    accepted = client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "h1", "token": token}))
    assert accepted.payload["statusCode"] == 200
    fake.script(Reply([ToolUse("bash", {"command": "echo from-the-sandbox"})]), Reply([Text("done")]))
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "run it"})))
    frames = management.wait_for("c1", "result")
    assert frames[0] == {"event": "status", "seq": 0, "status": "queued", "messageId": frames[0]["messageId"], "position": 0}
    tool_result = next(f for f in frames if f["event"] == "tool_result")
    assert tool_result["content"].strip() == "from-the-sandbox"
    client.lambda_.invoke("ws_disconnect", ws_event("$disconnect", "c1"))


def test_a_gone_client_does_not_stop_the_turn(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher = harness
    token = setup_session(client, "h2")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c2", query={"sessionId": "h2", "token": token}))
    fake.script(Reply([Text("an answer nobody hears", chunks=5)], delay=0.05))
    management.gone.add("c2")  # the client vanished without a $disconnect
    client.lambda_.invoke("ws_message", ws_event("$default", "c2", json.dumps({"action": "message", "prompt": "hello?"})))
    dispatcher.join(30)
    saved = json.loads(client.http.get("/users/alice/conversations/h2").body)["conversation"]["messages"]
    assert saved[-1]["content"][0]["text"] == "an answer nobody hears"


def test_bad_frame_and_unknown_connection(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, _, _ = harness
    client.lambda_.invoke("ws_message", ws_event("$default", "stranger", json.dumps({"action": "get_history"})))
    assert management.sent["stranger"][0]["code"] == "unknown_connection"
    token = setup_session(client, "h3")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c3", query={"sessionId": "h3", "token": token}))
    client.lambda_.invoke("ws_message", ws_event("$default", "c3", None))
    client.lambda_.invoke("ws_message", ws_event("$default", "c3", json.dumps({"action": "get_history"})))
    assert [f["event"] for f in management.sent["c3"]] == ["error", "history"]
