"""Issue 22: a turn reads the stored conversation from the compaction point its head records,
and reads the rest whenever the session's own working context starts earlier.

The compaction point (`contextFrom`) is the conversation's, the working context (summary and
offset) the session's: a new session continuing a conversation another session compacted has
no summary, so the model must be sent every message, never a placeholder for one not read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chalicelib.services.conversation_parts import CONTEXT_FROM_FIELD, UNLOADED
from chalicelib.services.conversations import ConversationsService
from chalicelib.storage.local import LocalDirectoryStore
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_a_session_without_the_summary_is_sent_every_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXT_WINDOW_TOKENS", "4000000")  # no compaction in this session
    seeded = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:03d} " + "word " * 400} for i in range(60)]
    store = LocalDirectoryStore(tmp_path / "data")
    writer = ConversationsService(store)
    for n in range(1, 61):  # as if another session had compacted it at message 50
        writer.append("alice", "r1", {"conversationId": "r1", "messages": seeded[:n], "metadata": {CONTEXT_FROM_FIELD: 50}})
    recent = ConversationsService(store).load_recent("alice", "r1")
    assert recent is not None and recent[0]["messages"][0] is UNLOADED  # the head's point is honoured
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "r1")
        fake.script(Reply([Text("An answer.")]))
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "r1", "token": token}))
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go on"})))
        frames = management.wait_for("c1", "result", timeout=60)
        dispatcher.join(30)
    assert not [f for f in frames if f["event"] == "error"], frames
    sent = json.dumps(fake.requests[-1]["messages"])
    assert "000 word" in sent and "not loaded" not in sent  # the whole history, no placeholder
    stored = ConversationsService(store).load("alice", "r1")
    assert stored is not None and stored[0]["messages"][:60] == seeded
    assert stored[0]["metadata"][CONTEXT_FROM_FIELD] == 0  # this session's context starts at the beginning
