"""Issue 21, row 8: a whole replace of a conversation (REST POST, `clear`) and compaction leave no orphans.

On both stores: a conversation long enough to be sealed into parts, then replaced whole, keeps
no part nothing names; a turn that saves after such a replace (its cached layout stale, in
another process) seals afresh and never names a deleted part.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.agent.compaction import SUMMARY_SYSTEM
from chalicelib.config import Settings
from chalicelib.container import get_container
from chalicelib.services.conversations import ConversationsService, Fence
from chalicelib.storage import ObjectStore
from chalicelib.storage.listing import iter_all
from chalicelib.storage.local import LocalDirectoryStore
from chalicelib.storage.s3 import S3Store, build_s3_client
from tests.fakes.fake_anthropic import Reply, Response, Text
from tests.support.api import ROOT
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event
from tests.support.s3 import create_bucket, storage_settings

PARTS = "users/alice/conversation-parts/c1/"


@pytest.fixture(params=["local", "moto_server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalDirectoryStore(tmp_path / "data")
        return
    settings = storage_settings(request.getfixturevalue("moto_endpoint"), f"orphans-{uuid.uuid4().hex[:12]}")
    create_bucket(settings)
    yield S3Store(build_s3_client(settings, boto3.session.Session()), settings.bucket)


def long_body(n: int) -> dict[str, object]:
    return {"conversationId": "c1", "messages": [{"role": "user", "content": f"{i:04d} " + "x" * 100_000} for i in range(n)]}


def test_a_replace_deletes_the_parts_it_no_longer_names(store: ObjectStore) -> None:
    turn = ConversationsService(store)
    etag = turn.append("alice", "c1", long_body(25), fence=Fence("s1", 1), etag=None)
    assert len(iter_all(store, PARTS)) >= 2  # sealed into parts
    rest = ConversationsService(store)  # the REST API, another process
    rest.save("alice", "c1", {"conversationId": "c1", "messages": [{"role": "user", "content": "fresh start"}]})
    assert iter_all(store, PARTS) == []
    # The turn's process still remembers the old parts; its next save meets the replace (412),
    # and must not write a head naming the parts just deleted.
    turn.append("alice", "c1", {**long_body(26), "metadata": {}}, fence=Fence("s1", 1), etag=etag)
    loaded = ConversationsService(store).load("alice", "c1")
    assert loaded is not None and len(loaded[0]["messages"]) == 26
    head = json.loads(store.get("users/alice/conversations/c1.json").body)
    named = ConversationsService(store).parts.named("alice", "c1", head)
    assert {o.key for o in iter_all(store, PARTS)} == named  # every stored part is named


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_compaction_leaves_no_orphans_and_the_next_turn_reads_from_its_point(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21, row 8 (compaction) and issue 22: a turn that compacts records its point in the
    head; every stored part stays named (compaction drops none: GET keeps the whole history),
    and the next turn reads no part before that point."""
    monkeypatch.setenv("CONTEXT_WINDOW_TOKENS", "20000")  # the 120 KB below is past 80% of it
    data = tmp_path / "data"
    seeded = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:03d} " + "word " * 400} for i in range(60)]
    writer = ConversationsService(LocalDirectoryStore(data))
    for n in range(1, 61):
        writer.append("alice", "k1", {"conversationId": "k1", "messages": seeded[:n]})

    def answer(body: dict[str, Any]) -> Response:
        if SUMMARY_SYSTEM in json.dumps(body.get("system")):
            return Reply([Text("SUMMARY of the sixty messages.")])
        return Reply([Text("An answer.")])

    read: list[str] = []
    original_get = LocalDirectoryStore.get

    def counted_get(self: LocalDirectoryStore, key: str) -> Any:
        read.append(key)
        return original_get(self, key)

    monkeypatch.setattr(LocalDirectoryStore, "get", counted_get)
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "k1")
        fake.script(*[answer] * 12)
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "k1", "token": token}))
        for prompt in ("first", "second"):
            management.sent.clear()
            if prompt == "second":
                # A cold process: the parts the first turn read are not in memory.
                stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
                get_container(Settings.from_env({**os.environ, **stage_env})).conversations.parts.drop_cache()
                read.clear()
            client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": prompt})))
            frames = management.wait_for("c1", "result", timeout=60)
            dispatcher.join(30)
            assert not [f for f in frames if f["event"] == "error"], frames
            if prompt == "first":
                assert any(f["event"] == "status" and f.get("status") == "compacted" for f in frames)
    second_turn_read = set(read)
    store = LocalDirectoryStore(data)
    head = json.loads((data / "users/alice/conversations/k1.json").read_text())
    # The working context is kept in the conversation's metadata, beside the offset the next turn reads from.
    kept_from = head["metadata"]["workingContext"]["keptFrom"]
    assert kept_from > 20 and head["metadata"]["contextFrom"] == kept_from
    parts = "users/alice/conversation-parts/k1/"
    named = ConversationsService(store).parts.named("alice", "k1", head)
    assert {o.key for o in iter_all(store, parts)} == named  # no orphans
    # The second turn read no part that holds only messages before the compaction point.
    whole = ConversationsService(store).load("alice", "k1")
    assert whole is not None and whole[0]["messages"][:60] == seeded and len(whole[0]["messages"]) == 64
    offset, early, needed = 0, set(), set()
    for key, count in zip(head["$parts"], head["$counts"], strict=True):
        (early if offset + count < kept_from - 1 else needed).add(parts + key)
        offset += count
    assert early and not early & second_turn_read, sorted(second_turn_read)
    assert needed & second_turn_read  # read cold: the parts from the compaction point were fetched
    assert "SUMMARY" in json.dumps(fake.requests[-1]["messages"][0]["content"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_a_clear_frame_deletes_every_part_of_a_sealed_conversation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21, row 8 (`clear`): the `clear` frame's whole replace leaves no part behind."""
    data = tmp_path / "data"
    store = LocalDirectoryStore(data)
    seeded = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:03d} " + "word " * 400} for i in range(40)]
    ConversationsService(store).append("alice", "k2", {"conversationId": "k2", "messages": seeded}, fence=Fence("s1", 1))
    parts = "users/alice/conversation-parts/k2/"
    assert len(iter_all(store, parts)) >= 2  # sealed into parts
    with lambda_harness(tmp_path, monkeypatch) as (client, management, _fake, _dispatcher):
        token = setup_session(client, "k2")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "k2", "token": token}))
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "clear"})))
        frames = management.wait_for("c1", "cleared", timeout=30)
        assert not [f for f in frames if f["event"] == "error"], frames
    assert iter_all(store, parts) == []
    loaded = ConversationsService(LocalDirectoryStore(data)).load("alice", "k2")
    assert loaded is not None and loaded[0]["messages"] == []
