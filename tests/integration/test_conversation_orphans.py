"""Issue 21, row 8: a whole replace of a conversation (REST POST, `clear`) leaves no orphans.

On both stores: a conversation long enough to be sealed into parts, then replaced whole, keeps
no part nothing names; a turn that saves after such a replace (its cached layout stale, in
another process) seals afresh and never names a deleted part.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from chalicelib.services.conversations import ConversationsService, Fence
from chalicelib.storage import ObjectStore
from chalicelib.storage.base import iter_all
from chalicelib.storage.local import LocalDirectoryStore
from chalicelib.storage.s3 import S3Store, build_s3_client
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
