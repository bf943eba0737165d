"""Item 10 of issue 11: a conversation near 5 MiB never loses a new reply.

A conversation of about 4.9 MiB is posted over REST, then continued over the websocket: each
turn's save appends (a small head plus sealed parts) instead of rewriting 5 MiB, GET still
returns the whole body in the documented shape, POST still replaces it, DELETE removes it all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.container import get_container
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.api import ROOT, make_api
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_a_conversation_near_5_mib_keeps_every_new_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    api = make_api("s3", tmp_path, monkeypatch, moto_endpoint)
    # A window above the history's size: this test is about storage, so the model gets the whole
    # conversation rather than a compacted working context (compaction has its own tests).
    monkeypatch.setenv("CONTEXT_WINDOW_TOKENS", "4000000")
    old = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:04d} " + "x" * 105_000} for i in range(49)]
    body = {"conversationId": "big", "messages": old, "metadata": {"startedAt": "2025-01-15T10:00:00Z"}}
    assert 4.6 * 2**20 < len(json.dumps(body)) < 5 * 2**20
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        assert client.http.post("/users/alice/conversations", body=json.dumps(body),
                                headers={"Content-Type": "application/json"}).status_code == 200
        token = setup_session(client, "big")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "big", "token": token}))
        for n in range(3):
            management.sent.clear()
            fake.script(Reply([Text(f"Reply {n}: " + "y" * 100_000)]))
            client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": f"more {n}"})))
            frames = management.wait_for("c1", "result", timeout=60)
            dispatcher.join(30)
            assert not [f for f in frames if f["event"] == "error"], frames
            assert frames[-1]["stopReason"] == "end_turn"
            if n == 0:
                parts_after_first = sorted(k for k in api.keys() if k.startswith("users/alice/conversation-parts/big/"))
        # The model was sent the whole history each time.
        sent = fake.requests[-1]["messages"]
        assert text_of(sent[0]["content"]).startswith("0000") and text_of(sent[-1]["content"]) == "more 2"

        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        container = get_container(Settings.from_env({**os.environ, **stage_env}))
        store = container.store
        container.conversations.parts.drop_cache()  # a cold process: the parts are read, not remembered
        gets: list[str] = []
        store.client.meta.events.register(  # type: ignore[attr-defined]
            "before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
        got = client.http.get("/users/alice/conversations/big")
        assert got.status_code == 200
        detail = json.loads(got.body)
        conversation = detail["conversation"]
        assert set(detail) == {"userId", "conversationId", "conversation", "metadata", "uploaded"}
        assert "$parts" not in conversation and conversation["conversationId"] == "big"
        messages = conversation["messages"]
        assert messages[:49] == old
        assert [m["content"] if m["role"] == "user" else m["content"][0]["text"][:8] for m in messages[49:]] == [
            "more 0", "Reply 0:", "more 1", "Reply 1:", "more 2", "Reply 2:"]
        assert detail["metadata"]["startedAt"] == "2025-01-15T10:00:00Z"

        keys = api.keys()
        head = api.raw("users/alice/conversations/big.json")
        parts = sorted(k for k in keys if k.startswith("users/alice/conversation-parts/big/"))
        assert len(head) < 300_000 and len(parts) >= 5  # the 16 KiB head keeps the last two messages
        assert sorted(gets) == sorted(["users/alice/conversations/big.json", *parts])  # GET: the head + one per part
        assert set(parts_after_first) <= set(parts)  # later turns never rewrote a sealed part
        listed = json.loads(client.http.get("/users/alice/conversations").body)["conversations"]
        assert [c["conversationId"] for c in listed] == ["big"]  # parts are not conversations

        small = {"conversationId": "big", "messages": [{"role": "user", "content": "fresh"}]}
        assert client.http.post("/users/alice/conversations", body=json.dumps(small),
                                headers={"Content-Type": "application/json"}).status_code == 200
        assert json.loads(client.http.get("/users/alice/conversations/big").body)["conversation"] == small
        assert client.http.delete("/users/alice/conversations/big").status_code == 200
        # (the turns' usage records name the session, also "big": not the conversation's)
        assert not [k for k in api.keys() if "/big" in k and k.startswith("users/") and "/usage/" not in k]


def text_of(content: str | list[dict[str, object]]) -> str:
    """A message's text, whether sent as a string or as blocks (prompt caching marks the latest)."""
    return content if isinstance(content, str) else "".join(str(b.get("text", "")) for b in content)
