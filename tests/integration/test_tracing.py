"""Issue 27: a turn traced end to end. One trace from the websocket `message` frame through the
turn runner (its invocation payload carries the traceparent), the turn, each model call (the
fake Messages API, tokens and cost on the span) and the tool call, into a real sandbox host
process that continues the trace from its traceparent header, plus the S3 calls (moto server)
made meanwhile: every span exported over OTLP/HTTP to a receiver on loopback."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.container import get_container
from chalicelib.realtime.dispatch import LambdaDispatcher
from chalicelib.telemetry import tracing
from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.api import ROOT, make_api
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.sandbox_host import HostProcess, free_port

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
# The batch processor's delay, so the spans arrive while the test waits.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


class InvokeAfterwards:
    """The Lambda Invoke API for LambdaDispatcher: keeps each payload it is sent
    (InvocationType=Event) and runs the app's turn_runner handler with it once the handler that
    sent it has returned. (Chalice's test client swaps os.environ for each invocation, so two at
    once on two threads would leave the test's variables behind.)"""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.payloads: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> None:  # noqa: N803 - boto3 names
        assert InvocationType == "Event"
        payload = json.loads(Payload)
        self.payloads.append(payload)
        self.pending.append(payload)

    def run_pending(self, limit: int = 5) -> None:
        """Run the invocations sent so far, and those they send, up to `limit` in all."""
        for _ in range(limit):
            if not self.pending:
                return
            self.client.lambda_.invoke("turn_runner", self.pending.pop(0))
        assert not self.pending, f"more than {limit} runner invocations"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with otlp_receiver() as found:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", found.url)
        for key, value in FAST_EXPORT.items():
            monkeypatch.setenv(key, value)
        assert tracing.configure()
        try:
            yield found
        finally:
            tracing.configure({})  # the rest of the run untraced, as it was


def children(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str | None = None) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id and (name is None or s.name == name)]


def only(found: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(found) == 1, [s.name for s in found]
    return found[0]


@pytest.mark.slow
@needs_bwrap
def test_one_trace_from_the_message_frame_to_the_sandbox_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              moto_endpoint: str, receiver: OtlpReceiver) -> None:
    token = secrets.token_urlsafe(16)
    host = HostProcess(free_port(), tmp_path / "host", token, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, **FAST_EXPORT).start()
    try:
        monkeypatch.setenv("SANDBOX_URL", host.url)
        monkeypatch.setenv("SANDBOX_TOKEN", token)
        make_api("s3", tmp_path, monkeypatch, moto_endpoint)
        with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, _):
            stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
            container = get_container(Settings.from_env({**os.environ, **stage_env}))
            lambda_api = InvokeAfterwards(client)
            container.override("dispatcher", LambdaDispatcher(lambda_api, "turn_runner"))
            container._built.pop("realtime", None)
            session_token = setup_session(client, "tr1")
            client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "tr1", "token": session_token}))
            fake.script(Reply([ToolUse("bash", {"command": "echo traced"})]), Reply([Text("Done.")]))
            client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "run it"})))
            lambda_api.run_pending()
            frames = management.wait_for("c1", "result", timeout=60)
        tracing.flush()
        spans = receiver.wait_for(lambda found: any(s.name == "sandbox host POST /sessions/{session_id}/bash" for s in found))
    finally:
        host.stop()

    # The runner was invoked with the handler's W3C trace context.
    assert len(lambda_api.payloads) >= 1 and lambda_api.payloads[0]["traceparent"].startswith("00-")
    root = only([s for s in spans if s.name == "websocket message"])
    assert root.parent_id == "" and root.kind == "server" and root.attributes["websocket.connection_id"] == "c1"
    trace = [s for s in spans if s.trace_id == root.trace_id]
    assert lambda_api.payloads[0]["traceparent"].split("-")[1] == root.trace_id

    runner = only(children(trace, root, "turn runner"))
    assert runner.kind == "consumer" and runner.attributes["session.id"] == "tr1"
    turn = only(children(trace, runner, "turn"))
    result = next(f for f in frames if f["event"] == "result")
    assert turn.attributes["gen_ai.request.model"] == result["model"]
    assert turn.attributes["turn.model_calls"] == 2 and turn.attributes["turn.stop_reason"] == "end_turn"
    assert turn.attributes["gen_ai.usage.input_tokens"] == result["usage"]["inputTokens"]
    assert turn.attributes["gen_ai.usage.output_tokens"] == result["usage"]["outputTokens"]
    assert turn.attributes["cost_usd"] == pytest.approx(result["costUsd"])

    calls = children(trace, turn, "model call")
    assert len(calls) == 2 and all(c.kind == "client" for c in calls)
    for call in calls:
        assert call.attributes["gen_ai.request.model"] == result["model"]
        assert call.attributes["gen_ai.usage.output_tokens"] > 0 and call.attributes["cost_usd"] > 0
        for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.cache_read.input_tokens",
                    "gen_ai.usage.cache_creation.input_tokens"):
            assert isinstance(call.attributes[key], int), key
    assert sum(c.attributes["gen_ai.usage.output_tokens"] for c in calls) == result["usage"]["outputTokens"]
    assert sum(c.attributes["cost_usd"] for c in calls) == pytest.approx(result["costUsd"])
    # The Messages API was called inside the model call spans: its requests carried this trace.
    sent = [h.get("traceparent", "") for h in fake.headers[-2:]]
    assert all(t.split("-")[1] == root.trace_id for t in sent), sent

    tool = only(children(trace, turn, "tool bash"))
    assert tool.attributes["gen_ai.tool.name"] == "bash" and tool.attributes["tool.is_error"] is False
    remote = only(children(trace, tool, "sandbox POST /sessions/{sessionId}/bash"))
    assert remote.kind == "client" and remote.attributes["http.response.status_code"] == 200
    on_host = only(children(trace, remote, "sandbox host POST /sessions/{session_id}/bash"))
    assert on_host.service == "claude-agent-sandbox-host" and on_host.kind == "server"
    assert on_host.attributes["session.id"] == "tr1" and on_host.attributes["http.response.status_code"] == 200
    assert root.service == runner.service == "claude-agent-backend"

    # Storage: the runner's reads and writes are S3 calls in the same trace.
    storage = [s for s in trace if s.name.startswith("s3 ")]
    assert {"s3 GetObject", "s3 PutObject"} <= {s.name for s in storage}, {s.name for s in storage}
    assert all(s.kind == "client" and s.attributes["aws.s3.bucket"] and "http.response.status_code" in s.attributes
               for s in storage)
    # Every span of the trace hangs off the message frame's.
    ids = {s.span_id for s in trace}
    assert all(s.parent_id in ids for s in trace if s is not root)


def test_a_rest_request_is_a_server_span_continuing_its_callers_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      moto_endpoint: str, receiver: OtlpReceiver) -> None:
    api = make_api("s3", tmp_path, monkeypatch, moto_endpoint)
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = api.client.http.post("/users/alice/skills", body=json.dumps({"name": "notes.md", "content": "# Notes"}),
                                    headers={"Content-Type": "application/json", "traceparent": caller})
    assert response.status_code == 200, response.body
    tracing.flush()
    spans = receiver.wait_for(lambda found: any(s.name == "POST /users/{userId}/skills" for s in found))
    request = only([s for s in spans if s.name == "POST /users/{userId}/skills"])
    assert request.trace_id == "0af7651916cd43dd8448eb211c80319c" and request.parent_id == "b7ad6b7169203331"
    assert request.kind == "server" and request.attributes["http.response.status_code"] == 200
    assert request.attributes["user.id"] == "alice" and request.attributes["http.route"] == "/users/{userId}/skills"
    writes = [s for s in spans if s.parent_id == request.span_id and s.name == "s3 PutObject"]
    assert writes and all(s.attributes["aws.s3.key"].startswith("users/alice/") for s in writes)
