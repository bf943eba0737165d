"""The websocket handlers as Lambda invocations (chalice.test.Client().lambda_.invoke), with a
fake API Gateway management client that records what it is asked to send."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from chalicelib.config import Settings
from chalicelib.container import get_container
from chalicelib.realtime.dispatch import ThreadDispatcher
from chalicelib.realtime.sender import ChaliceSender
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support.api import ROOT


class GoneException(Exception):
    pass


class PayloadTooLargeException(Exception):
    pass


#: API Gateway's frame limit: a larger post_to_connection is refused (PayloadTooLargeException).
MAX_DATA_BYTES = 128 * 1024


class FakeManagementClient:
    """Records post_to_connection calls; connections in `gone` raise GoneException, as AWS does,
    and a frame over 128 KiB raises PayloadTooLargeException (recorded in `refused`)."""

    class exceptions:  # noqa: N801 - botocore's shape
        GoneException = GoneException
        PayloadTooLargeException = PayloadTooLargeException

    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {}
        self.gone: set[str] = set()
        self.closed: list[str] = []  # connections the app closed (delete_connection)
        self.refused: list[int] = []  # sizes of frames refused as too large
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    def post_to_connection(self, ConnectionId: str, Data: str) -> None:  # noqa: N803 - boto3 names
        with self.lock:
            if ConnectionId in self.gone:
                raise GoneException(ConnectionId)
            if len(Data.encode() if isinstance(Data, str) else Data) > MAX_DATA_BYTES:
                self.refused.append(len(Data))
                raise PayloadTooLargeException(f"Message too long: {len(Data)} bytes")
            self.sent.setdefault(ConnectionId, []).append(json.loads(Data))
            self.arrived.notify_all()

    def get_connection(self, ConnectionId: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        with self.lock:
            if ConnectionId in self.gone:
                raise GoneException(ConnectionId)
            return {"ConnectionId": ConnectionId}

    def delete_connection(self, ConnectionId: str) -> None:  # noqa: N803 - boto3 names
        with self.lock:
            if ConnectionId in self.gone:
                raise GoneException(ConnectionId)
            self.gone.add(ConnectionId)
            self.closed.append(ConnectionId)

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


@contextmanager
def lambda_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Client, FakeManagementClient, FakeAnthropic, ThreadDispatcher]]:
    """The app's handlers with a fake management API and a scripted model; storage as the
    environment says (the embedded store in tmp_path unless S3 variables are set)."""
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
        dispatcher = ThreadDispatcher(lambda sid, handoff: container.turn_runner(sender).run(sid, handoff=handoff))
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
