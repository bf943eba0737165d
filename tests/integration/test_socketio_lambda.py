"""Socket.IO through API Gateway: the Engine.IO framing of app.py's websocket handlers, invoked
as Lambda invokes them (chalice.test.Client().lambda_.invoke), with a fake management API that
records every message sent, the scripted Messages API and a real sandbox. Packets are written
and read here by hand, as socket.io-client 4 writes and reads them."""

from __future__ import annotations

import json
import os
import re
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
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text, ToolUse
from tests.support.lambda_ws import (
    FakeManagementClient,
    GoneException,
    lambda_harness,
    setup_session,
    ws_event,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

PACKET = re.compile(r"^4(?P<type>\d)(?:(?P<nsp>/[^,]*),)?(?P<id>\d+)?(?P<data>.*)$", re.DOTALL)


class RawManagement(FakeManagementClient):
    """Keeps each message as text: Engine.IO packets are not JSON."""

    def post_to_connection(self, ConnectionId: str, Data: str) -> None:  # noqa: N803 - boto3 names
        with self.lock:
            if ConnectionId in self.gone:
                raise GoneException(ConnectionId)
            self.sent.setdefault(ConnectionId, []).append(Data if isinstance(Data, str) else Data.decode())  # type: ignore[arg-type]
            self.arrived.notify_all()

    def wait_text(self, connection_id: str, predicate: Any, timeout: float = 30) -> list[str]:
        with self.lock:
            ok = self.arrived.wait_for(lambda: any(predicate(t) for t in self.sent.get(connection_id, [])), timeout)
            assert ok, f"nothing matched for {connection_id}: {self.sent.get(connection_id)}"
            return list(self.sent[connection_id])  # type: ignore[arg-type]


def events(texts: list[str]) -> list[tuple[str, Any, int | None]]:
    """(name, data, ack id) of every event packet (`42...`)."""
    found = []
    for text in texts:
        match = PACKET.match(text)
        if match and match["type"] == "2":
            name, *args = json.loads(match["data"])
            found.append((name, args[0] if args else None, int(match["id"]) if match["id"] else None))
    return found


def has_event(name: str, check: Any = lambda data: True) -> Any:
    return lambda text: any(n == name and check(d) for n, d, _ in events([text]))


class ThreadInvoker:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.threads: list[threading.Thread] = []

    def invoke(self, payload: dict[str, Any]) -> None:
        thread = threading.Thread(target=self.run, args=(payload,), daemon=True)
        self.threads.append(thread)
        thread.start()


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Client, RawManagement, FakeAnthropic]]:
    import app as app_module

    monkeypatch.setenv("TURN_POLL_SECONDS", "0.1")
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, _):
        raw = RawManagement()
        app_module.app.websocket_api.session.management = raw
        stage_env = json.loads((Path(app_module.__file__).parent / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        container = get_container(Settings.from_env({**os.environ, **stage_env}))
        # The turn runner Lambda as app.py declares it (the Engine.IO-aware sender included).
        dispatcher = ThreadDispatcher(lambda sid, handoff: app_module.turn_runner(
            {"sessionId": sid, **({"handoff": handoff.payload()} if handoff else {})}, None))
        invoker = ThreadInvoker(lambda payload: app_module.turn_runner(payload, None))
        container.override("dispatcher", dispatcher)
        container.override("background", invoker)
        container._built.pop("realtime", None)
        try:
            yield client, raw, fake
        finally:
            dispatcher.join()
            for thread in invoker.threads:
                thread.join(15)
            container._built.pop("background", None)


def _open(client: Client, management: RawManagement, cid: str, query: dict[str, str], headers: dict[str, str] | None = None) -> dict[str, Any]:
    event = ws_event("$connect", cid, query={"EIO": "4", "transport": "websocket", **query})
    event["headers"] = headers or {}
    assert client.lambda_.invoke("ws_connect", event).payload["statusCode"] == 200
    opened = management.wait_text(cid, lambda t: t.startswith("0"))[0]
    return json.loads(opened[1:])  # type: ignore[no-any-return]


def _scheduled(client: Client) -> dict[str, Any]:
    """The event EventBridge's rate(1 minute) rule hands the ping function."""
    return client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={},
                                           resources=["arn:aws:events:us-east-1:123456789012:rule/socketio-ping"])


def _send(client: Client, cid: str, text: str) -> None:
    client.lambda_.invoke("ws_message", ws_event("$default", cid, text))


def test_open_connect_chat_and_ping(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake = harness
    token = setup_session(client, "eio1")
    handshake = _open(client, management, "e1", {"sessionId": "eio1"})
    assert handshake["upgrades"] == [] and handshake["pingInterval"] == 60000 and handshake["pingTimeout"] == 60000
    assert handshake["maxPayload"] == 128 * 1024 and handshake["sid"]
    _send(client, "e1", "40/ws," + json.dumps({"token": token}))
    connected = management.wait_text("e1", lambda t: t.startswith("40/ws,"))
    assert json.loads(connected[1][len("40/ws,"):])["sid"]
    fake.script(Reply([ToolUse("bash", {"command": "echo from-the-sandbox"})]), Reply([Text("It printed.")]))
    _send(client, "e1", '42/ws,["get_history"]')
    _send(client, "e1", '42/ws,["start",{"maxTurns":5,"resume":"x"}]')
    _send(client, "e1", '42/ws,["message",{"prompt":"run it","options":{}}]')
    sent = management.wait_text("e1", has_event("result"))
    assert all(t.startswith(("0", "40/ws,", "42/ws,")) for t in sent)  # every event in the namespace
    got = events(sent)
    names = [n for n, _, _ in got]
    assert names[0] == "history" and got[0][1]["messages"] == []
    ready = next(d for n, d, _ in got if n == "status" and d["status"] == "ready")
    assert ready["message"].startswith("Session initialized") and ready["unsupportedOptions"] == ["resume"]
    post = next(d for n, d, _ in got if n == "hook_notification" and d["event"] == "PostToolUse")
    assert post["data"]["tool_response"].strip() == "from-the-sandbox"
    assert "".join(d["content"] for n, d, _ in got if n == "stream") == "It printed."
    result = next(d for n, d, _ in got if n == "result")
    assert result["num_turns"] == 2 and result["subtype"] == "success"
    # The scheduled ping reaches every Engine.IO connection, and forgets the gone ones.
    handshake2 = _open(client, management, "e2", {"sessionId": "eio1", "token": token})
    assert handshake2["sid"] != handshake["sid"]
    management.gone.add("e2")
    pinged = client.lambda_.invoke("socketio_ping", _scheduled(client)).payload
    assert pinged == {"pinged": 1} and management.sent["e1"][-1] == "2"
    _send(client, "e1", "3")  # the pong: nothing to answer
    assert management.sent["e1"][-1] == "2"
    client.lambda_.invoke("ws_disconnect", ws_event("$disconnect", "e1"))
    assert client.lambda_.invoke("socketio_ping", _scheduled(client)).payload == {"pinged": 0}


@pytest.mark.parametrize(("answer", "allowed"), [({"action": "continue"}, True), ({"action": "block"}, False)])
def test_a_permission_ask_answered_by_an_ack_packet(harness, answer, allowed) -> None:  # type: ignore[no-untyped-def]
    client, management, fake = harness
    assert client.http.put("/users/alice/settings", body=json.dumps({"permissions": {"bash": "ask"}}),
                           headers={"Content-Type": "application/json"}).status_code == 200
    token = setup_session(client, "eio2")
    _open(client, management, "p1", {"sessionId": "eio2", "token": token})
    _send(client, "p1", "40")
    management.wait_text("p1", lambda t: t.startswith("40{"))
    fake.script(Reply([ToolUse("bash", {"command": "echo ran-it"})]), Reply([Text("Done.")]))
    _send(client, "p1", '42["message","run it"]')
    sent = management.wait_text("p1", has_event("hook_request"))
    [(_, request, ack)] = [e for e in events(sent) if e[0] == "hook_request"]
    assert request["event"] == "PreToolUse" and request["data"]["tool_input"] == {"command": "echo ran-it"}
    assert ack is not None
    _send(client, "p1", f"43{ack + 1}" + json.dumps([answer]))  # an ack for no such request
    assert management.wait_text("p1", has_event("error", lambda d: d["details"]["code"] == "no_pending_permission"))
    _send(client, "p1", f"43{ack}" + json.dumps([answer]))
    sent = management.wait_text("p1", has_event("result"))
    post = next(d for n, d, _ in events(sent) if n == "hook_notification" and d["event"] == "PostToolUse")
    assert post["data"]["is_error"] is (not allowed)
    assert ("ran-it" in post["data"]["tool_response"]) is allowed


def test_reconnect_interrupt_and_clear(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake = harness
    token = setup_session(client, "eio3")
    _open(client, management, "r1", {"sessionId": "eio3", "token": token})
    _send(client, "r1", "40")
    fake.script(Reply([Text("First answer.")]), Reply([Text("long " * 300, chunks=300)], delay=0.03))
    _send(client, "r1", '42["message","First question"]')
    management.wait_text("r1", has_event("result"))
    client.lambda_.invoke("ws_disconnect", ws_event("$disconnect", "r1"))
    _open(client, management, "r2", {"sessionId": "eio3", "token": token})
    _send(client, "r2", "40")
    sent = management.wait_text("r2", has_event("history"))
    got = events(sent)
    assert got[0][0] == "status" and got[0][1]["message"] == "Session resumed"
    assert [m["role"] for m in got[1][1]["messages"]] == ["user", "assistant"]
    _send(client, "r2", '42["message","Tell me a long story"]')
    management.wait_text("r2", has_event("stream"))
    _send(client, "r2", '42["interrupt"]')
    sent = management.wait_text("r2", has_event("result"))
    assert any(n == "status" and d["message"] == "Interrupted" for n, d, _ in events(sent))
    assert next(d for n, d, _ in events(sent) if n == "result")["interrupted"] is True
    _send(client, "r2", '42["clear"]')
    sent = management.wait_text("r2", has_event("cleared"))
    _send(client, "r2", '42["get_history"]')
    sent = management.wait_text("r2", has_event("history", lambda d: d["messages"] == []))


def test_refusals(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, _ = harness
    polling = ws_event("$connect", "x0", query={"EIO": "4", "transport": "polling", "sessionId": "eio4"})
    refused = client.lambda_.invoke("ws_connect", polling).payload
    assert refused["statusCode"] == 400 and json.loads(refused["body"])["code"] == "transport_not_offered"
    old = ws_event("$connect", "x0", query={"EIO": "3", "transport": "websocket", "sessionId": "eio4"})
    assert json.loads(client.lambda_.invoke("ws_connect", old).payload["body"])["code"] == "engineio_version"
    setup_session(client, "eio4")
    _open(client, management, "x1", {"sessionId": "eio4"})
    _send(client, "x1", "40")
    error = management.wait_text("x1", lambda t: t.startswith("44"))[-1]
    assert json.loads(error[2:])["data"] == {"code": "missing_credentials"}
    assert "auth: {token}" in json.loads(error[2:])["message"]
    _send(client, "x1", '40/chat,{"token":"x"}')
    error = management.wait_text("x1", lambda t: t.startswith("44/chat,"))[-1]
    assert json.loads(error[len("44/chat,"):])["data"] == {"code": "unknown_namespace"}
    _send(client, "x1", '42["message","hi"]')  # an event before any accepted CONNECT
    assert management.wait_text("x1", lambda t: t.startswith("44,") or t.startswith("44{"))


def test_the_open_packet_waits_for_the_connection_and_plain_connections_stay_plain(harness) -> None:  # type: ignore[no-untyped-def]
    client, management, fake = harness
    management.gone.add("late")  # API Gateway answers Gone until $connect has returned
    threading.Timer(0.5, lambda: management.gone.discard("late")).start()
    event = ws_event("$connect", "late", query={"EIO": "4", "transport": "websocket", "sessionId": "whatever"})
    assert client.lambda_.invoke("ws_connect", event).payload["statusCode"] == 200
    assert management.wait_text("late", lambda t: t.startswith("0{"))
    # A plain connection beside it: JSON frames, from the handlers and from the turn runner.
    token = setup_session(client, "plain1")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "plain1", "token": token}))
    fake.script(Reply([Text("plain")]))
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "hi"})))
    sent = management.wait_text("c1", lambda t: '"event":"result"' in t)
    assert all(json.loads(t)["event"] for t in sent)
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", "42"))  # not an Engine.IO connection: a bad frame
    assert json.loads(management.wait_text("c1", lambda t: '"invalid_frame"' in t)[-1])["code"] == "invalid_frame"


USER_TOKEN_SECRET = "user-token-secret-for-tests-0123456789"


@pytest.fixture
def user_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before the harness builds its container: the server mints and accepts user tokens."""
    monkeypatch.setenv("USER_TOKEN_SECRET", USER_TOKEN_SECRET)


def _mint(client: Client, user: str) -> str:
    response = client.http.post(f"/users/{user}/tokens")
    assert response.status_code == 200, response.body
    return str(json.loads(response.body)["token"])


def _refusal(management: RawManagement, cid: str) -> dict[str, Any]:
    error = management.wait_text(cid, lambda t: t.startswith("44"))[-1]
    return json.loads(error[2:])  # type: ignore[no-any-return]


def test_user_tokens_open_only_their_own_users_sessions(user_tokens, harness) -> None:  # type: ignore[no-untyped-def]
    """Only $connect sees the headers: a user token there (or in ?access_token=) is verified at
    $connect and the link keeps its user, never the token; one in the CONNECT packet's auth is
    verified there. Ownership is the plain websocket's: own or new sessions only."""
    from chalicelib.realtime.engineio_links import _key

    client, management, fake = harness
    alice, bob = _mint(client, "alice"), _mint(client, "bob")
    # Alice's token in the Authorization header: a new session id is set up for her on CONNECT.
    _open(client, management, "u1", {"sessionId": "tok1"}, headers={"Authorization": f"Bearer {alice}"})
    stored = (Path(os.environ["DATA_DIR"]) / _key("u1")).read_text()
    assert alice not in stored and json.loads(stored)["tokenUser"] == "alice"
    _send(client, "u1", "40")
    assert management.wait_text("u1", lambda t: t.startswith("40{"))
    fake.script(Reply([Text("Hello Alice.")]))
    _send(client, "u1", '42["message","hi"]')
    assert next(d for n, d, _ in events(management.wait_text("u1", has_event("result"))) if n == "result")["is_error"] is False
    saved = json.loads(client.http.get("/users/alice/conversations/tok1").body)
    assert saved["conversation"]["messages"][-1]["content"][0]["text"] == "Hello Alice."
    # In the query (?access_token=), and in the CONNECT packet's auth: the same session.
    _open(client, management, "u2", {"sessionId": "tok1", "access_token": alice})
    assert alice not in (Path(os.environ["DATA_DIR"]) / _key("u2")).read_text()
    _send(client, "u2", "40")
    assert management.wait_text("u2", lambda t: t.startswith("40{"))
    _open(client, management, "u3", {"sessionId": "tok1"})
    _send(client, "u3", "40" + json.dumps({"token": alice}))
    assert management.wait_text("u3", lambda t: t.startswith("40{"))
    # Bob's token: not Alice's session, nor a new one in Alice's name, wherever it is sent.
    _open(client, management, "b1", {"sessionId": "tok1"}, headers={"Authorization": f"Bearer {bob}"})
    _send(client, "b1", "40")
    assert _refusal(management, "b1")["data"] == {"code": "forbidden_user"}
    _open(client, management, "b2", {"sessionId": "tok1"})
    _send(client, "b2", "40" + json.dumps({"token": bob}))
    assert _refusal(management, "b2")["data"] == {"code": "forbidden_user"}
    _open(client, management, "b3", {"sessionId": "tok-new"})
    _send(client, "b3", "40" + json.dumps({"token": bob, "userId": "alice"}))
    assert _refusal(management, "b3")["data"] == {"code": "forbidden_user"}
    assert client.http.get("/sessions/tok-new/files").status_code == 404  # nothing was set up
    # A token that does not verify: refused at $connect (headers), or at CONNECT (auth).
    tampered = alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB")
    event = ws_event("$connect", "f1", query={"EIO": "4", "transport": "websocket", "sessionId": "tok1"})
    event["headers"] = {"Authorization": f"Bearer {tampered}"}
    refused = client.lambda_.invoke("ws_connect", event).payload
    assert refused["statusCode"] == 401 and json.loads(refused["body"])["code"] == "invalid_token"
    _open(client, management, "f2", {"sessionId": "tok1"})
    _send(client, "f2", "40" + json.dumps({"token": tampered}))
    assert _refusal(management, "f2")["data"] == {"code": "invalid_token"}
