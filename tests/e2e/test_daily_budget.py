"""USER_DAILY_BUDGET_USD: a running turn stops after the step that reaches it, the next message
is refused with `daily_budget_reached`, and the usage report holds what the turns cost."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

# Each step of 10k input and 1k output tokens costs a few cents at any Sonnet price.
STEP = {"input_tokens": 10_000, "output_tokens": 1_000}


def test_the_daily_budget_stops_a_turn_and_refuses_the_next_message(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = world.setup("budget1", "alice")
    world.fake.script(Reply([Text("one step")], **STEP))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "price one step"}))
        step_cost = receive_until(ws, "result")[-1]["costUsd"]
    assert step_cost and step_cost > 0
    # What was spent plus a step and a half: the next turn must stop after its second step.
    monkeypatch.setenv("USER_DAILY_BUDGET_USD", f"{step_cost * 2.5:.6f}")
    world.fake.script(*[Reply([ToolUse("bash", {"command": f"echo step{i}"})], **STEP) for i in range(2)])
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "keep going"}))
        frames = receive_until(ws, "result")
        statuses = [f for f in frames if f["event"] == "status" and f.get("status") == "budget_reached"]
        assert statuses, [(f["event"], f.get("status"), f.get("code"), f.get("message")) for f in frames if f["event"] != "stream"]
        assert frames[-1]["stopReason"] == "budget_reached"
        assert sum(1 for f in frames if f["event"] == "tool_use") == 2  # 1.5 steps were left: no third model call
        assert not world.fake.queue
        # Sent the moment `result` arrives, this one may be queued before the turn is metered: the
        # runner then refuses it before it costs anything. Once metered, the edge refuses at once.
        for prompt in ("one more?", "and another?"):
            ws.send(json.dumps({"action": "message", "prompt": prompt}))
            refused = receive_until(ws, "error")[-1]
            assert refused["code"] == "daily_budget_reached" and "USER_DAILY_BUDGET_USD" in refused["message"]
    assert refused["retryAfter"] > 0
    day = world.http.get("/users/alice/usage").json()["days"][-1]
    assert day["messages"] == 2 and day["costUsd"] == pytest.approx(step_cost + frames[-1]["costUsd"], abs=1e-6)
    # Another user is not held back by alice's spending.
    bob = world.setup("budget2", "bob")
    world.fake.script(Reply([Text("hello bob")], input_tokens=1, output_tokens=1))
    with connect(world.ws_url(bob)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "hi"}))
        assert receive_until(ws, "result")[-1]["stopReason"] == "end_turn"
