"""Issue 21, row 7: an event larger than API Gateway's 128 KB frame limit is sent in parts.

Through the Lambda handlers, with a fake management API that refuses a frame over 128 KiB as
API Gateway does (PayloadTooLargeException): a 300 KB reply arrives as `message` parts the
client joins, and so does the `history` that holds it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from scripts.chat import FrameParts
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def joined(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The frames as a client sees them once parts are joined (scripts/chat's joiner)."""
    parts = FrameParts()
    return [whole for f in frames if (whole := parts.join(f)) is not None]


def test_a_300_kb_reply_and_its_history_arrive_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reply = "".join(f"line {i:05d}: {'é' * 20} \"quoted\" \\\\ back\n" for i in range(6_000))
    assert len(reply.encode()) > 300_000
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "big")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "big", "token": token}))
        fake.script(Reply([Text(reply, chunks=30)]))
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "long"})))
        management.wait_for("c1", "result", timeout=60)
        dispatcher.join(30)
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "get_history"})))
        frames = list(management.sent["c1"])
    assert management.refused == []  # nothing was too large for API Gateway
    assert any(f.get("parts") for f in frames)  # it did take parts
    whole = joined(frames)
    [message] = [f for f in whole if f["event"] == "message" and f.get("role") == "assistant"]
    assert message["content"] == [{"type": "text", "text": reply}]
    assert "".join(f["content"] for f in whole if f["event"] == "stream") == reply
    [history] = [f for f in whole if f["event"] == "history"]
    assert history["messages"][-1]["content"] == [{"type": "text", "text": reply}]
