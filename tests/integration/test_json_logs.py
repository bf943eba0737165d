"""Structured logs: every line the app writes while serving REST, websocket frames and a turn is
one JSON object carrying the ids known there (request, session, turn, user); with
LOG_HASH_USER_IDS=1 the user id is a hash. Lambda's environment turns them on (LOG_FORMAT=json elsewhere)."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chalicelib.telemetry import json_logs, log_context
from tests.fakes.fake_anthropic import Reply, Text
from tests.integration.test_turn_takeover import frames_of
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@contextmanager
def captured(env: dict[str, str]) -> Iterator[io.StringIO]:
    """A handler on the root logger, formatted as json_logs.configure formats the root's handlers
    (in Lambda, or LOG_FORMAT=json), writing here. Only this handler: pytest's own stay as they are."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    holder = logging.Logger("holder")
    holder.addHandler(handler)
    assert json_logs.configure(env, holder)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in out.getvalue().splitlines()]  # every line is one JSON object
    for line in parsed:
        assert {"time", "level", "logger", "message"} <= set(line) and line["time"].endswith("Z")
    return parsed


def with_request_id(event: dict[str, Any], request_id: str) -> dict[str, Any]:
    event["requestContext"]["requestId"] = request_id
    return event


def drive(client: Any, management: Any, fake: Any, dispatcher: Any) -> None:
    token = setup_session(client, "logs1")
    assert client.http.get("/users/alice/skills").status_code == 200
    client.lambda_.invoke("ws_connect", with_request_id(ws_event("$connect", "c1", query={"sessionId": "logs1", "token": token}), "req-connect"))
    fake.script(Reply([Text("Hello.")]))
    client.lambda_.invoke("ws_message", with_request_id(
        ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "hi"})), "req-message"))
    frames_of(management, "c1", lambda fs: any(f["event"] == "result" for f in fs))
    dispatcher.join(30)
    client.lambda_.invoke("ws_message", with_request_id(ws_event("$default", "c1", "not json"), "req-bad"))
    client.lambda_.invoke("ws_disconnect", with_request_id(ws_event("$disconnect", "c1"), "req-disconnect"))


def test_every_line_is_json_with_the_ids_known_where_it_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with captured({"LOG_FORMAT": "json"}) as out, lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        drive(client, management, fake, dispatcher)
    logged = lines(out)
    by_message = {line["message"]: line for line in logged}

    setup = next(line for line in logged if line["message"].startswith("POST /setup/{sessionId} -> 200"))
    assert (setup["sessionId"], setup["userId"]) == ("logs1", "alice")
    skills = next(line for line in logged if line["message"].startswith("GET /users/{userId}/skills -> 200"))
    assert skills["userId"] == "alice" and "sessionId" not in skills

    connect = by_message["websocket connect c1: 200"]
    assert (connect["requestId"], connect["sessionId"]) == ("req-connect", "logs1")
    frame = by_message["frame MessageFrame"]
    assert (frame["requestId"], frame["sessionId"], frame["userId"]) == ("req-message", "logs1", "alice")
    refused = next(line for line in logged if line["message"].startswith("frame refused: "))
    assert (refused["requestId"], refused["sessionId"]) == ("req-bad", "logs1")
    started, ended = by_message["turn started"], by_message["turn ended"]
    assert started["turnId"] == ended["turnId"] and started["turnId"]
    assert (started["sessionId"], started["userId"]) == ("logs1", "alice")
    assert by_message["websocket disconnect c1"]["requestId"] == "req-disconnect"
    assert log_context.current() == {}  # nothing leaks past the work it was bound for


def test_user_ids_are_hashed_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with captured({"LOG_FORMAT": "json", "LOG_HASH_USER_IDS": "1"}) as out, \
            lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        drive(client, management, fake, dispatcher)
    with_user = [line for line in lines(out) if "userId" in line]
    assert len(with_user) >= 4
    assert {line["userId"] for line in with_user} == {json_logs.hashed_user("alice")}
    assert json_logs.hashed_user("alice") != json_logs.hashed_user("bob")


def test_an_exception_is_one_line_with_its_traceback() -> None:
    formatter = json_logs.JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=__import__("sys").exc_info())
    with log_context.bound(sessionId="s", turnId="t"):
        line = formatter.format(record)
    assert "\n" not in line and record.message == "failed here"  # set, as logging.Formatter sets it
    parsed = json.loads(line)
    assert parsed["message"] == "failed here" and "ValueError: boom" in parsed["error"]
    assert (parsed["sessionId"], parsed["turnId"]) == ("s", "t")


def test_json_only_inside_lambda_or_when_asked() -> None:
    assert json_logs.wanted({"AWS_LAMBDA_FUNCTION_NAME": "f"}) and json_logs.wanted({"LOG_FORMAT": "json"})
    assert not json_logs.wanted({}) and not json_logs.wanted({"AWS_LAMBDA_FUNCTION_NAME": "f", "LOG_FORMAT": "text"})
    with pytest.raises(ValueError, match="unknown log ids"):
        with log_context.bound(user="x"):
            pass
