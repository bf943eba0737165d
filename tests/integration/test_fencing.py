"""Fencing (issue 21, item 1): writes under a lease another runner has taken over are refused.

On both stores (the local directory and S3 through moto's server): a conversation saved under
a newer lease epoch refuses a save from an older one, and keeps what the newer one wrote; the
session state refuses every runner write (finish, working context, permission requests, lease
renewal) once the turn carries another claim. On the local store, a writer stopped while it
holds a key's lock (SIGSTOP) neither blocks the next writer nor overwrites it when it wakes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest

from chalicelib.realtime.lease import LeaseLost, QueueEmpty, Recovery, TurnRequest, claim_next
from chalicelib.realtime.permissions import PermissionDesk
from chalicelib.realtime.state import QueuedPrompt, SessionState, StateStore, utcnow
from chalicelib.services.conversations import ConversationsService, ConversationUnreadable, Fence, FencedOut
from chalicelib.storage import ObjectStore
from chalicelib.storage.local import LOCK_TAKEOVER_SECONDS, LocalDirectoryStore
from chalicelib.storage.s3 import S3Store, build_s3_client
from tests.support.api import ROOT
from tests.support.s3 import create_bucket, storage_settings

KEY = "users/alice/conversations/c1.json"


@pytest.fixture(params=["local", "moto_server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalDirectoryStore(tmp_path / "data")
        return
    settings = storage_settings(request.getfixturevalue("moto_endpoint"), f"fence-{uuid.uuid4().hex[:12]}")
    create_bucket(settings)
    yield S3Store(build_s3_client(settings, boto3.session.Session()), settings.bucket)


def body(*texts: str) -> dict[str, object]:
    return {"conversationId": "c1", "messages": [{"role": "user", "content": t} for t in texts], "metadata": {}}


def test_a_save_under_an_older_epoch_is_refused_and_changes_nothing(store: ObjectStore) -> None:
    conversations = ConversationsService(store)
    first = conversations.append("alice", "c1", body("m1"), fence=Fence("s1", 1), etag=None)
    # The new owner (epoch 2) read the head the paused one last wrote, and saves on top of it.
    second = conversations.append("alice", "c1", body("m1", "m2"), fence=Fence("s1", 2), etag=first)
    # The paused one wakes up with its old copy and its old ETag.
    with pytest.raises(FencedOut):
        conversations.append("alice", "c1", body("m1", "LATE"), fence=Fence("s1", 1), etag=first)
    # ... and as a runner that never saw the head (a first save): the stored epoch refuses it too.
    with pytest.raises(FencedOut):
        conversations.append("alice", "c1", body("LATE"), fence=Fence("s1", 1), etag=None)
    stored = json.loads(store.get(KEY).body)
    assert [m["content"] for m in stored["messages"]] == ["m1", "m2"]
    assert stored["metadata"] == {"sessionId": "s1", "leaseEpoch": 2}
    assert store.get(KEY).info.etag == second


def test_a_fenced_save_overwrites_what_no_newer_epoch_wrote(store: ObjectStore) -> None:
    conversations = ConversationsService(store)
    etag = conversations.append("alice", "c1", body("m1"), fence=Fence("s1", 1), etag=None)
    # A REST replace (no fence) and a write from another session do not stop the turn.
    conversations.save("alice", "c1", body("replaced"))
    conversations.append("alice", "c1", body("other"), fence=Fence("s2", 9), etag=None)
    conversations.append("alice", "c1", body("m1", "m2"), fence=Fence("s1", 1), etag=etag)
    assert [m["content"] for m in json.loads(store.get(KEY).body)["messages"]] == ["m1", "m2"]


def test_a_fenced_save_never_overwrites_a_head_it_cannot_read(store: ObjectStore) -> None:
    conversations = ConversationsService(store)
    etag = conversations.append("alice", "c1", body("m1"), fence=Fence("s1", 1), etag=None)
    store.put(KEY, b'{"conversationId": "c1", "messages": [{"role": "us')  # truncated
    with pytest.raises(ConversationUnreadable):
        conversations.append("alice", "c1", body("m1", "m2"), fence=Fence("s1", 1), etag=etag)
    with pytest.raises(ConversationUnreadable):
        conversations.load("alice", "c1")
    assert store.get(KEY).body == b'{"conversationId": "c1", "messages": [{"role": "us'


def test_state_writes_under_a_lost_lease_are_refused(store: ObjectStore) -> None:
    states = StateStore(store)
    lease_time = timedelta(seconds=10)
    states.update("s1", lambda s: s.queue.append(QueuedPrompt(prompt="m1")),
                  create=lambda: SessionState(session_id="s1", user_id="alice", conversation_id="s1"))
    claimed, _ = states.update("s1", lambda s: claim_next(s, "paused", utcnow(), lease_time))
    assert isinstance(claimed, TurnRequest) and claimed.lease.epoch == 1
    # The paused runner's lease runs out; another takes the turn over to repair it.
    def expire(s: SessionState) -> None:
        assert s.turn is not None
        s.turn.lease_until = utcnow() - timedelta(seconds=1)

    states.update("s1", expire)
    taken, state = states.update("s1", lambda s: claim_next(s, "new-owner", utcnow(), lease_time))
    assert isinstance(taken, Recovery) and taken.lease.epoch == 2 and state.lease_epoch == 2
    before = store.get("sessions/s1/state.json")
    stale = claimed.lease
    for what, mutate in {
        "finish": lambda s: stale.require(s, "recording the end of the turn"),
        "memory": lambda s: stale.require(s, "saving the agent's working context"),
    }.items():
        with pytest.raises(LeaseLost):
            states.update("s1", mutate)
    desk = PermissionDesk(states, "s1", stale.turn_id, lambda e: e, lambda: False, timeout_seconds=1, poll_seconds=0.1,
                          lease=stale)
    with pytest.raises(LeaseLost):
        desk.ask("toolu_1", "bash", {"command": "ls"})
    after = store.get("sessions/s1/state.json")
    assert after.body == before.body and after.info.etag == before.info.etag  # nothing written at all
    # The same runner id claiming again (its own claim, a retried write) keeps its epoch.
    again, _ = states.update("s1", lambda s: claim_next(s, "new-owner", utcnow(), lease_time))
    assert isinstance(again, Recovery) and again.lease == taken.lease


def test_an_empty_queue_claims_nothing() -> None:
    state = SessionState(session_id="s", user_id="u", conversation_id="s")
    assert isinstance(claim_next(state, "r", utcnow(), timedelta(seconds=5)), QueueEmpty)
    assert state.lease_epoch == 0


def test_a_writer_stopped_holding_a_local_lock_neither_blocks_nor_overwrites(tmp_path: Path) -> None:
    """A real process takes the key's lock and stops (SIGSTOP) before its rename: the next
    writer takes the lock over after LOCK_TAKEOVER_SECONDS; the stopped one, continued, writes nothing."""
    data = tmp_path / "data"
    store = LocalDirectoryStore(data)
    store.put("sessions/s1/state.json", b"v1")
    script = textwrap.dedent(f"""
        import os, signal, sys
        from chalicelib.storage.local import LocalDirectoryStore
        from chalicelib.storage.base import StorageUnavailable
        store = LocalDirectoryStore({str(data)!r})
        real = store._check_preconditions
        def stop_inside_the_lock(*args):
            real(*args)
            print("locked", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        store._check_preconditions = stop_inside_the_lock
        try:
            store.put("sessions/s1/state.json", b"stale", if_match=store.head("sessions/s1/state.json").etag)
        except StorageUnavailable as exc:
            print("refused:", exc, flush=True)
            sys.exit(0)
        print("written", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        started = time.monotonic()
        writer = threading.Thread(target=lambda: store.put(
            "sessions/s1/state.json", b"new-owner", if_match=store.head("sessions/s1/state.json").etag), daemon=True)
        writer.start()
        writer.join(timeout=LOCK_TAKEOVER_SECONDS + 20)  # bounded: a lock with no timeout would block it for good
        blocked = writer.is_alive()
        waited = time.monotonic() - started
        os.kill(child.pid, signal.SIGCONT)
        writer.join(timeout=10)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait(timeout=10)
    assert not blocked, "the next writer waited on the stopped one's lock until it was continued"
    assert waited >= LOCK_TAKEOVER_SECONDS  # it gave a live holder its chance first
    assert out.startswith("refused:"), out
    assert store.get("sessions/s1/state.json").body == b"new-owner"
    # The lock works on after the takeover.
    store.put("sessions/s1/state.json", b"v3", if_match=store.head("sessions/s1/state.json").etag)
    assert store.get("sessions/s1/state.json").body == b"v3"
