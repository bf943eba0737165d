"""Where a model stream cut off (issue 11) meets compaction (issue 13): a summarising call whose
connection drops before `message_stop` is asked again, never kept as the working context.

The SDK hands back a cut stream's partial message as if complete; a truncated summary stored in
the session state would silently stand in for the earlier messages on every later turn.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from chalicelib.agent.compaction import SUMMARY_SYSTEM
from tests.fakes.fake_anthropic import Reply, Response, Text
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

FULL_SUMMARY = "SUMMARY-COMPLETE: the user and the assistant discussed eight long topics."


def test_a_summary_cut_mid_stream_is_asked_again_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXT_WINDOW_TOKENS", "4000")  # the history below is past 80% of it
    summaries: list[str] = []

    def answer(body: dict[str, Any]) -> Response:
        if SUMMARY_SYSTEM in json.dumps(body.get("system")):
            summaries.append("asked")
            if len(summaries) == 1:  # the first summarising call is cut off mid-text (clean EOF)
                return Reply([Text("CUT-SUMMARY " * 6, chunks=6)], drop_after=2)
            return Reply([Text(FULL_SUMMARY)])
        return Reply([Text("The answer, from the summary.")])

    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "cs1")
        history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"topic {i}: " + "word " * 400} for i in range(8)]
        conversation = tmp_path / "data/users/alice/conversations/cs1.json"
        conversation.parent.mkdir(parents=True, exist_ok=True)
        conversation.write_text(json.dumps({"conversationId": "cs1", "messages": history}))
        fake.script(*[answer] * 12)
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "cs1", "token": token}))
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go on"})))
        frames = management.wait_for("c1", "result", timeout=60)
        dispatcher.join(30)
    assert fake.drops == 1 and len(summaries) >= 2
    assert not [f for f in frames if f["event"] == "error"], frames
    assert any(f["event"] == "status" and f.get("status") == "compacted" for f in frames)
    assert frames[-1]["stopReason"] == "end_turn"
    # The working context is kept in the conversation's metadata, saved with it.
    stored = json.loads((tmp_path / "data/users/alice/conversations/cs1.json").read_text())
    summary = stored["metadata"]["workingContext"]["summary"]
    assert "CUT-SUMMARY" not in summary and FULL_SUMMARY in summary
    assert FULL_SUMMARY in json.dumps(fake.requests[-1]["messages"][0]["content"])
    # Nor was the cut text passed on: not to a later summarising call, not to the model.
    assert not [r for r in fake.requests if "CUT-SUMMARY" in json.dumps(r.get("messages"))]
