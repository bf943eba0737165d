"""A message left queued with no runner (the runner's process died before it claimed it) runs
when a client connects again, through the Lambda handlers: a reconnect after a crash never
waits for another message to start it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.container import get_container
from chalicelib.realtime.state import QueuedPrompt, SessionState
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.api import ROOT
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_a_connect_starts_a_runner_for_a_queued_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "q1")
        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        states = get_container(Settings.from_env({**os.environ, **stage_env})).realtime.states

        def left_queued(state: SessionState) -> None:
            state.started = True
            state.queue.append(QueuedPrompt(prompt="still there?", id="m-left"))

        states.update("q1", left_queued, create=lambda: SessionState(session_id="q1", user_id="alice", conversation_id="q1"))
        fake.script(Reply([Text("yes, still here")]))
        assert client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "q1", "token": token})
                                     ).payload["statusCode"] == 200
        dispatcher.join(30)
        saved = json.loads(client.http.get("/users/alice/conversations/q1").body)["conversation"]["messages"]
        assert [m["role"] for m in saved] == ["user", "assistant"]
        assert saved[-1]["content"][0]["text"] == "yes, still here"
        state = states.read("q1")
        assert state is not None and state.queue == [] and state.turn is None
