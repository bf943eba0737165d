"""The websocket handlers as Lambda invocations (chalice.test.Client().lambda_.invoke), with a
fake API Gateway management client, including a client that is gone (GoneException)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from chalicelib.config import Settings
from chalicelib.container import get_container
from chalicelib.realtime.dispatch import ThreadDispatcher
from chalicelib.realtime.sender import ChaliceSender
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text, ToolUse
from tests.support.api import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


class GoneException(Exception):
    pass


class FakeManagementClient:
    """Records post_to_connection calls; connections in `gone` raise GoneException, as AWS does."""

    class exceptions:  # noqa: N801 - botocore's shape
        GoneException = GoneException

    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {}
        self.gone: set[str] = set()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    def post_to_connection(self, ConnectionId: str, Data: str) -> None:  # noqa: N803 - boto3 names
        with self.lock:
            if ConnectionId in self.gone:
                raise GoneException(ConnectionId)
            self.sent.setdefault(ConnectionId, []).append(json.loads(Data))
            self.arrived.notify_all()

    def wait_for(self, connection_id: str, event: str, timeout: float = 20) -> list[dict[str, Any]]:
        with self.lock:
            ok = self.arrived.wait_for(lambda: any(f["event"] == event for f in self.sent.get(connection_id, [])), timeout)
            assert ok, f"no {event} for {connection_id}: {self.sent.get(connection_id)}"
            return list(self.sent[connection_id])


class FakeSession:
    def __init__(self, client: FakeManagementClient) -> None:
        self.management = client
        self.region_name = "us-east-1"

    def client(self, service: str, **_: Any) -> FakeManagementClient:
        assert service == "apigatewaymanagementapi"
        return self.management


def ws_event(route: str, connection: str, body: str | None = None, query: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "requestContext": {"routeKey": route, "connectionId": connection, "domainName": "abc.execute-api.us-east-1.amazonaws.com",
                           "stage": "api", "apiId": "abc", "eventType": "MESSAGE"},
        "queryStringParameters": query, "headers": {}, "body": body, "isBase64Encoded": False,
    }


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Client, FakeManagementClient, FakeAnthropic, ThreadDispatcher]]:
    import app as app_module

    app = app_module.app
    with FakeAnthropic() as fake:
        for key, value in {"DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb"),
                           "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": fake.url}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("LOCAL_GATEWAY_URL", raising=False)
        management = FakeManagementClient()
        api = app.websocket_api
        saved = (api.session, api._client, api._endpoint)
        api.session, api._client, api._endpoint = FakeSession(management), None, None
        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        container = get_container(Settings.from_env({**os.environ, **stage_env}))
        sender = ChaliceSender(api)
        dispatcher = ThreadDispatcher(lambda sid: container.turn_runner(sender).run(sid))
        container.override("dispatcher", dispatcher)
        container._built.pop("realtime", None)
        try:
            with Client(app, stage_name="dev", project_dir=str(ROOT)) as client:
                yield client, management, fake, dispatcher
        finally:
            dispatcher.join()
            api.session, api._client, api._endpoint = saved
            container._built.pop("dispatcher", None)
            container._built.pop("realtime", None)


def setup_session(client: Client, session: str) -> str:
    response = client.http.post(f"/setup/{session}?userId=alice")
    assert response.status_code == 200, response.body
    return json.loads(response.body)["token"]


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
