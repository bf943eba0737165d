"""A permission prompt as it runs on AWS: the handlers as Lambda invocations, the turn runner in
its own thread (its own Lambda there), S3 (moto server) as the only thing they share. Pins the
state writes a prompt costs (the README's cost table)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.container import get_container
from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.integration.test_turn_ops import kind
from tests.support.api import ROOT, make_api
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_a_permission_prompt_across_lambdas_and_what_it_costs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    monkeypatch.setenv("TURN_POLL_SECONDS", "0.2")
    api = make_api("s3", tmp_path, monkeypatch, moto_endpoint)
    assert api.send("PUT", "/users/alice/settings", {"permissions": {"bash": "ask"}}).status_code == 200
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        store = get_container(Settings.from_env({**os.environ, **stage_env})).store
        counts: Counter[str] = Counter()

        def count(params: dict[str, Any], model: Any, **_: Any) -> None:
            counts[f"{model.name} {kind(params.get('Key') or params.get('Prefix') or '')}"] += 1

        store.client.meta.events.register("before-parameter-build.s3", count)  # type: ignore[attr-defined]
        token = setup_session(client, "perm-ops")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "perm-ops", "token": token}))

        def turn(answer: bool) -> dict[str, int]:
            management.sent.clear()
            counts.clear()
            fake.script(Reply([ToolUse("bash", {"command": "echo ran-on-lambda"})]), Reply([Text("done")]))
            client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go"})))
            if answer:
                request = management.wait_for("c1", "permission_request")[-1]
                time.sleep(0.5)  # the runner polls meanwhile: reads only
                client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps(
                    {"action": "permission", "toolUseId": request["toolUseId"], "decision": "allow"})))
            management.wait_for("c1", "result")
            dispatcher.join(30)
            return dict(counts)

        monkeypatch.setenv("PERMISSION_TIMEOUT_SECONDS", "300")
        asked = turn(answer=True)
        frames = management.sent["c1"]
        assert next(f for f in frames if f["event"] == "tool_result")["content"].strip() == "ran-on-lambda"
        ack = next(f for f in frames if f.get("status") == "permission_received")
        assert ack["seq"] == 0 and ack["decision"] == "allow"
        # The same turn where bash is allowed, for the difference.
        api.send("PUT", "/users/alice/settings", {"permissions": {"bash": "allow"}})
        allowed = turn(answer=False)
    print(f"\nasked: {asked}\nallowed: {allowed}")
    # Open the request and close it (runner) + the decision (handler): 3 state writes.
    assert asked["PutObject state"] - allowed["PutObject state"] == 3
    # The handler reads the state before its write; the runner writes from the state as it knows
    # it, and polls while it waits (0.5 s at 0.2 s here) with a HeadObject, reading the body once
    # the answer changed it.
    assert asked["GetObject state"] - allowed["GetObject state"] >= 1 + 1
    assert asked.get("HeadObject state", 0) - allowed.get("HeadObject state", 0) >= 2
