"""Issue 21, row 6: a full disk fails whole, at once.

DATA_DIR on a tiny tmpfs (mounted here as root, unmounted after), filled while a turn runs: the
save of a large reply is refused (ENOSPC); the client gets `error` `storage_full` and `result`
at once (not after retries or the lease), and the stored conversation is what it was. Once
space is freed, the next message runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.services.conversations import ConversationsService
from chalicelib.storage.local import LocalDirectoryStore
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event
from tests.support.tmpfs import fill, tiny_tmpfs

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Iterator[Path]:
    with tiny_tmpfs(tmp_path / "data", "8m") as data:
        yield data


def message(client: Any, prompt: str, message_id: str | None = None) -> None:
    frame = {"action": "message", "prompt": prompt} | ({"messageId": message_id} if message_id else {})
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps(frame)))


def test_a_message_the_full_disk_refuses_is_said_not_queued_and_a_resend_runs_once(
        tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "fullq")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "fullq", "token": token}))
        management.sent.clear()
        filler = fill(tiny_data_dir, leave=0)
        message(client, "hello", "m-full-1")
        [refused] = [f for f in management.wait_for("c1", "error") if f["event"] == "error"]
        assert refused["code"] == "storage_full" and refused["messageId"] == "m-full-1", refused
        assert "was not queued" in refused["message"] and "Free space" in refused["message"]
        state = json.loads((tiny_data_dir / "sessions/fullq/state.json").read_text())
        assert state["queue"] == [] and state.get("turn") is None  # nothing half-queued
        assert not fake.requests

        filler.unlink()
        fake.script(Reply([Text("queued this time")]))
        management.sent.clear()
        message(client, "hello", "m-full-1")  # the resend the error asked for
        frames = management.wait_for("c1", "result", timeout=30)
        dispatcher.join(30)
        assert frames[-1]["stopReason"] == "end_turn", frames
        saved = whole_conversation(tiny_data_dir, "alice", "fullq")["messages"]
        assert [m["content"] for m in saved if m["role"] == "user"] == ["hello"] and len(fake.requests) == 1


def test_a_turn_whose_save_finds_the_disk_full_ends_at_once(tiny_data_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_LEASE_SECONDS", "3")
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "full")
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "full", "token": token}))
        fake.script(Reply([Text("small answer")]))
        message(client, "first")
        management.wait_for("c1", "result", timeout=30)
        dispatcher.join(30)
        conversation = tiny_data_dir / "users/alice/conversations/full.json"
        before = conversation.read_bytes()

        filler = fill(tiny_data_dir, leave=64 * 1024)  # room to queue and start, not for the reply
        fake.script(Reply([Text("x" * 400_000, chunks=20)]))
        management.sent.clear()
        message(client, "a long one")
        frames = management.wait_for("c1", "result", timeout=30)
        dispatcher.join(30)
        errors = [f for f in frames if f["event"] == "error"]
        assert errors and errors[0]["code"] == "storage_full", frames
        assert "Free space" in errors[0]["message"]
        assert frames[-1]["event"] == "result" and frames[-1]["stopReason"] == "error"
        # Read as a reader does (head and sealed parts put back together): the save that refused
        # may have sealed earlier messages into a part before its head found no room.
        assert "x" * 1000 not in conversation.read_text()  # the reply that did not fit was not half-written
        saved = whole_conversation(tiny_data_dir, "alice", "full")
        assert "x" * 1000 not in json.dumps(saved)
        assert json.loads(before)["messages"] == saved["messages"][: len(json.loads(before)["messages"])]

        filler.unlink()
        fake.script(Reply([Text("room again")]))
        management.sent.clear()
        message(client, "and now?")
        frames = management.wait_for("c1", "result", timeout=30)
        dispatcher.join(30)
        assert frames[-1]["stopReason"] == "end_turn", frames
        assert "room again" in conversation.read_text()


def whole_conversation(data: Path, user_id: str, conversation_id: str) -> dict[str, Any]:
    """The stored conversation as GET returns it (head and sealed parts together)."""
    loaded = ConversationsService(LocalDirectoryStore(data)).load(user_id, conversation_id)
    assert loaded is not None, conversation_id
    return loaded[0]
