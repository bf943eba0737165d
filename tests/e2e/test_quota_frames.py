"""USER_MESSAGES_PER_MINUTE over the websocket: the message past the limit is an error event."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import Reply, Text
from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_messages_past_the_minute_s_limit_are_refused_with_retry_after(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_MESSAGES_PER_MINUTE", "2")
    if time.time() % 60 > 45:  # the three messages must fall in one UTC minute
        time.sleep(61 - time.time() % 60)
    setup = world.setup("mpm1", "alice")
    world.fake.script(Reply([Text("one")]), Reply([Text("two")]))
    with connect(world.ws_url(setup)) as ws:
        for prompt in ("first", "second"):
            ws.send(json.dumps({"action": "message", "prompt": prompt}))
            assert receive_until(ws, "result")[-1]["event"] == "result"
        ws.send(json.dumps({"action": "message", "prompt": "third"}))
        refused = receive_until(ws, "error")[-1]
    assert refused["code"] == "quota_exceeded" and "USER_MESSAGES_PER_MINUTE=2" in refused["message"]
    assert 1 <= refused["retryAfter"] <= 61
    # Another user's count is their own.
    other = world.setup("mpm2", "bob")
    world.fake.script(Reply([Text("bob's")]))
    with connect(world.ws_url(other)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "hi"}))
        assert receive_until(ws, "result")[-1]["event"] == "result"
