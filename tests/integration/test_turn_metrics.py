"""A turn's metrics as CloudWatch EMF lines on the runner's stdout: turns, duration, time to first
token, tokens and cost by model; errors by the code the client was sent; tool latency by tool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from chalicelib.telemetry.turn_metrics import TurnMetrics, enabled
from tests.fakes.fake_anthropic import HttpError, Reply, Text, ToolUse
from tests.integration.test_turn_takeover import frames_of
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def emf_documents(text: str) -> list[dict[str, Any]]:
    documents = [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]
    for document in documents:  # what CloudWatch needs to extract them
        for directive in document["_aws"]["CloudWatchMetrics"]:
            assert all(key in document for dims in directive["Dimensions"] for key in dims)
            assert all(isinstance(document[m["Name"]], (int, float, list)) for m in directive["Metrics"])
    return documents


def metric(documents: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in documents if any(m["Name"] == name for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"])]


@pytest.mark.slow
@needs_bwrap
def test_turns_publish_their_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("METRICS_FORMAT", "emf")
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "met1")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "met1", "token": token}))
        fake.script(Reply([ToolUse("bash", {"command": "sleep 0.3; echo hi"})]), Reply([Text("Done.")]),
                    HttpError(400, "invalid_request_error", "prompt is too long"))
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "run it"})))
        frames_of(management, "c1", lambda fs: sum(f["event"] == "result" for f in fs) == 1)
        dispatcher.join(30)
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "again"})))
        frames = frames_of(management, "c1", lambda fs: sum(f["event"] == "result" for f in fs) == 2)
        dispatcher.join(30)
    documents = emf_documents(capsys.readouterr().out)
    turns = metric(documents, "Turns")
    assert len(turns) == 2 and all(d["Turns"] == 1 and d["sessionId"] == "met1" for d in turns)
    first = turns[0]
    result = next(f for f in frames if f["event"] == "result")
    assert first["InputTokens"] == result["usage"]["inputTokens"] and first["OutputTokens"] == result["usage"]["outputTokens"]
    assert first["CostUSD"] == result["costUsd"] and first["Model"] == result["model"]
    assert first["TurnDurationMs"] == result["durationMs"] and 0 < first["TimeToFirstTokenMs"] < 30_000
    tools = metric(documents, "ToolLatencyMs")
    assert [d["Tool"] for d in tools] == ["bash"] and tools[0]["ToolLatencyMs"][0] >= 300
    sent_codes = [f["code"] for f in frames if f["event"] == "error"]
    errors = metric(documents, "TurnErrors")
    assert sent_codes and [d["ErrorCode"] for d in errors] == sent_codes and errors[0]["turnId"] == turns[1]["turnId"]


def test_documents_of_a_turn_without_a_result() -> None:
    clock = iter([0.0, 0.5, 0.75, 1.0, 2.0])
    lines: list[str] = []
    metrics = TurnMetrics("s", "t", write=lines.append, clock=lambda: next(clock), namespace="Test")
    metrics.observe({"event": "stream", "type": "text", "content": "He"})
    metrics.observe({"event": "tool_use", "id": "toolu_1", "name": "read_file"})
    metrics.observe({"event": "tool_result", "tool_use_id": "toolu_1"})
    metrics.observe({"event": "error", "code": "storage_unavailable"})
    metrics.publish()
    turn, error, tool = (json.loads(line) for line in lines)
    assert turn["TimeToFirstTokenMs"] == 500.0 and turn["Model"] == "unknown" and "CostUSD" not in turn
    assert turn["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Model"], []]
    assert (error["ErrorCode"], error["TurnErrors"]) == ("storage_unavailable", 1)
    assert (tool["Tool"], tool["ToolLatencyMs"]) == ("read_file", [250.0])


def test_on_in_lambda_or_when_asked() -> None:
    assert enabled({"AWS_LAMBDA_FUNCTION_NAME": "f"}) and enabled({"METRICS_FORMAT": "emf"})
    assert not enabled({}) and not enabled({"AWS_LAMBDA_FUNCTION_NAME": "f", "METRICS_FORMAT": "off"})
