"""Sealing and reassembling conversation parts (the layout behind item 10 of issue 11)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib.errors import Conflict, ValidationFailed
from chalicelib.services import conversation_parts
from chalicelib.services.conversation_parts import (
    CHAPTERS_FIELD,
    CONTEXT_FROM_FIELD,
    COUNTS_FIELD,
    KEEP_TAIL,
    MAX_HEAD_PARTS,
    PARTS_FIELD,
    SEAL_BYTES,
    UNLOADED,
    RecentHistory,
    encode,
)
from chalicelib.services.conversations import ConversationsService, Fence
from chalicelib.storage.listing import iter_all
from chalicelib.storage.local import LocalDirectoryStore


def message(i: int, size: int = 300_000) -> dict[str, str]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}:" + "z" * size}


def test_appends_seal_parts_and_reads_put_them_back(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    service = ConversationsService(store)
    messages: list[dict[str, str]] = []
    for i in range(20):
        messages.append(message(i))
        service.append("u", "c", {"conversationId": "c", "messages": messages, "metadata": {"n": i}})
        assert (tmp_path / "users/u/conversations/c.json").stat().st_size < 1.5 * 2**20
    body, _ = service.load("u", "c")  # type: ignore[misc]
    assert body["messages"] == messages and body["metadata"] == {"n": 19} and "$parts" not in body
    # A fresh process (nothing remembered) reads the same whole body.
    assert ConversationsService(store).load("u", "c")[0] == body  # type: ignore[index]


def test_a_rewritten_history_is_sealed_afresh_not_mixed_with_old_parts(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    service = ConversationsService(store)
    messages = [message(i) for i in range(10)]
    service.append("u", "c", {"conversationId": "c", "messages": messages})
    compacted = [{"role": "user", "content": "summary of the above"}, message(10, 10)]
    service.append("u", "c", {"conversationId": "c", "messages": compacted})
    assert ConversationsService(store).load("u", "c")[0]["messages"] == compacted  # type: ignore[index]


def test_a_head_naming_another_users_objects_is_refused(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    store.put("users/victim/settings/preferences.json", b'[{"role": "user", "content": "secret"}]')
    store.put("users/u/conversations/c.json", json.dumps(
        {"conversationId": "c", "messages": [], "$parts": ["users/victim/settings/preferences.json"]}).encode())
    with pytest.raises(ValidationFailed) as caught:
        ConversationsService(store).get("u", "c")
    assert caught.value.code == "conversation_incomplete"
    assert [o.key for o in iter_all(store, "users/u/")] == ["users/u/conversations/c.json"]


@pytest.mark.parametrize("part", [b"[" * 5000 + b"]" * 5000, b'[{"role": "user", "content": NaN}]', b'{"role": "user"}'])
def test_a_tampered_part_is_refused_like_a_tampered_head(tmp_path: Path, part: bytes) -> None:
    # Parts (turn) are stored documents like the head (read with safejson since rest): a part
    # nested past the interpreter's limit, with NaN, or not a list answers 422, not a 500.
    store = LocalDirectoryStore(tmp_path)
    store.put("users/u/conversation-parts/c/0.json", part)
    store.put("users/u/conversations/c.json", json.dumps(
        {"conversationId": "c", "messages": [], "$parts": ["users/u/conversation-parts/c/0.json"]}).encode())
    with pytest.raises(ValidationFailed) as caught:
        ConversationsService(store).get("u", "c")
    assert caught.value.code == "conversation_incomplete"


# -- the 16 KiB head (issue 22): constant bytes per save, reads from the compaction point -------


class Counting:
    """A store that records the keys read and the bytes written through it."""

    def __init__(self, store: LocalDirectoryStore) -> None:
        self.store = store
        self.gets: list[str] = []
        self.written: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def get(self, key: str) -> Any:
        self.gets.append(key)
        return self.store.get(key)

    def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        self.written.append((key, len(data)))
        return self.store.put(key, data, **kwargs)

    def take(self) -> tuple[list[str], list[tuple[str, int]]]:
        taken = self.gets, self.written
        self.gets, self.written = [], []
        return taken


def reply(i: int) -> dict[str, Any]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:05d} " + "w" * 2_000}


def head_of(store: Any, user: str = "u", conversation: str = "c") -> dict[str, Any]:
    return json.loads(store.get(f"users/{user}/conversations/{conversation}.json").body)  # type: ignore[no-any-return]


def unnamed(store: Any, service: ConversationsService, user: str = "u", conversation: str = "c") -> set[str]:
    """Stored parts and chapters the head does not name: orphans."""
    stored = {o.key for o in iter_all(store, f"users/{user}/conversation-parts/{conversation}/")}
    return stored - service.parts.named(user, conversation, head_of(store, user, conversation))


def test_each_save_writes_about_the_same_bytes_at_message_20_and_at_message_1500(tmp_path: Path) -> None:
    store = Counting(LocalDirectoryStore(tmp_path))
    service = ConversationsService(store)  # type: ignore[arg-type]
    messages: list[dict[str, Any]] = []
    per_save: list[int] = []
    for i in range(1_500):
        messages.append(reply(i))
        service.append("u", "c", {"conversationId": "c", "messages": messages, "metadata": {"n": i}})
        per_save.append(sum(n for _, n in store.take()[1]))
    early, late = sum(per_save[10:30]) / 20, sum(per_save[-20:]) / 20
    assert late <= 1.3 * early, (early, late)
    # The head stays small: a tail under SEAL_BYTES (plus the last messages) and chapter references.
    head = head_of(store)
    assert len(encode(head)) < SEAL_BYTES + 3 * 2_100 + 4_000 and head[CHAPTERS_FIELD]
    assert len(head[PARTS_FIELD]) <= MAX_HEAD_PARTS
    fresh = ConversationsService(store.store)
    assert fresh.load("u", "c")[0]["messages"] == messages  # type: ignore[index]
    assert unnamed(store.store, fresh) == set()


def test_a_turn_reads_only_the_parts_from_the_recorded_compaction_point(tmp_path: Path) -> None:
    local = LocalDirectoryStore(tmp_path)
    messages = [reply(i) for i in range(400)]
    writer = ConversationsService(local)
    for n in range(1, 401):
        writer.append("u", "c", {"conversationId": "c", "messages": messages[:n], "metadata": {CONTEXT_FROM_FIELD: 380}})
    store = Counting(local)
    turn = ConversationsService(store)  # type: ignore[arg-type]
    loaded = turn.load_recent("u", "c")
    assert loaded is not None
    body, etag, sealed = loaded
    gets, _ = store.take()
    history = body["messages"]
    assert len(history) == 400 and history[379:] == messages[379:]
    assert all(m is UNLOADED for m in history[:360])  # not read: before the compaction point's part
    read_bytes = sum(len(local.get(k).body) for k in gets)
    # The head, the chapter naming the part that holds message 379, and the parts from there:
    # about 60 KB of an 850 KB conversation.
    assert read_bytes < 25 * 2_100 + 2 * SEAL_BYTES, gets
    # The turn saves with the placeholders: only the head and new parts are written.
    history.append(reply(400))
    turn.append("u", "c", {**body, "messages": history}, etag=etag, sealed=sealed)
    _, written = store.take()
    assert [k for k, _ in written] == ["users/u/conversations/c.json"]
    whole = ConversationsService(local).load("u", "c")
    assert whole is not None and whole[0]["messages"] == [*messages, reply(400)]
    # A context that starts earlier reads the rest (RecentHistory.whole).
    again = turn.load_recent("u", "c")
    assert again is not None
    recent = RecentHistory(again[0]["messages"], lambda m: turn.load_rest("c", again[2], m))
    assert recent.loaded_from > 0 and list(recent.whole()) == [*messages, reply(400)] and recent.loaded_from == 0


def test_a_head_of_the_1_mib_layout_is_read_and_rewritten_in_the_new_one_at_its_first_save(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    old = [reply(i) for i in range(30)]
    # Written by the earlier layout: `$parts` without `$counts`.
    store.put("users/u/conversation-parts/c/000001-aaaaaaaa.json", json.dumps(old[:20]).encode())
    store.put("users/u/conversations/c.json", json.dumps(
        {"conversationId": "c", "messages": old[20:], "$parts": ["users/u/conversation-parts/c/000001-aaaaaaaa.json"],
         "metadata": {CONTEXT_FROM_FIELD: 25}}).encode())
    service = ConversationsService(store)
    got, _ = service.get("u", "c")
    assert got.conversation["messages"] == old and "$parts" not in got.conversation
    loaded = service.load_recent("u", "c")
    assert loaded is not None and loaded[0]["messages"] == old  # read whole: its parts' lengths are unknown
    service.append("u", "c", {**loaded[0], "messages": [*old, reply(30)]}, etag=loaded[1], sealed=loaded[2])
    head = head_of(store)
    assert head[PARTS_FIELD][0] == "000001-aaaaaaaa.json" and head[COUNTS_FIELD][0] == 20  # kept, not rewritten
    assert ConversationsService(store).load("u", "c")[0]["messages"] == [*old, reply(30)]  # type: ignore[index]


def test_a_head_without_parts_is_read_and_sealed_at_its_first_save(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    old = [reply(i) for i in range(30)]
    store.put("users/u/conversations/c.json", json.dumps({"conversationId": "c", "messages": old}).encode())
    service = ConversationsService(store)
    loaded = service.load_recent("u", "c")
    assert loaded is not None and loaded[0]["messages"] == old and loaded[2].count == 0
    service.append("u", "c", {**loaded[0], "messages": [*old, reply(30)]}, etag=loaded[1], sealed=loaded[2])
    assert len(head_of(store)["messages"]) == KEEP_TAIL and head_of(store)[COUNTS_FIELD] == [29]
    assert ConversationsService(store).load("u", "c")[0]["messages"] == [*old, reply(30)]  # type: ignore[index]


def test_a_rewritten_history_deletes_the_parts_it_no_longer_names(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    service = ConversationsService(store)
    messages = [reply(i) for i in range(100)]
    for n in range(1, 101):
        service.append("u", "c", {"conversationId": "c", "messages": messages[:n]})
    rewritten = [*messages[:20], {"role": "user", "content": "edited"}, *messages[21:]]
    service.append("u", "c", {"conversationId": "c", "messages": rewritten})
    assert ConversationsService(store).load("u", "c")[0]["messages"] == rewritten  # type: ignore[index]
    assert unnamed(store, service) == set()


def test_a_replace_of_a_chaptered_conversation_deletes_every_part_and_chapter(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    service = ConversationsService(store)
    messages = [reply(i) for i in range(600)]
    for n in range(1, 601):
        service.append("u", "c", {"conversationId": "c", "messages": messages[:n]})
    assert head_of(store)[CHAPTERS_FIELD]
    ConversationsService(store).save("u", "c", {"conversationId": "c", "messages": [reply(0)]})
    assert iter_all(store, "users/u/conversation-parts/c/") == []


@pytest.mark.parametrize("head", [
    {COUNTS_FIELD: [2]},  # one count too many
    {COUNTS_FIELD: ["x"]},
    {CHAPTERS_FIELD: [["users/u/conversation-parts/c/chapter-x.json", -1]]},
])
def test_a_tampered_layout_is_refused(tmp_path: Path, head: dict[str, Any]) -> None:
    store = LocalDirectoryStore(tmp_path)
    store.put("users/u/conversations/c.json", json.dumps(
        {"conversationId": "c", "messages": [], PARTS_FIELD: [], **head}).encode())
    with pytest.raises(ValidationFailed) as caught:
        ConversationsService(store).get("u", "c")
    assert caught.value.code == "conversation_incomplete"


def _long(store: LocalDirectoryStore, n: int = 200, context_from: int = 190) -> list[dict[str, Any]]:
    messages = [reply(i) for i in range(n)]
    writer = ConversationsService(store)
    for k in range(1, n + 1):
        writer.append("u", "c", {"conversationId": "c", "messages": messages[:k], "metadata": {CONTEXT_FROM_FIELD: context_from}},
                      fence=Fence("s1", 1), etag=None if k == 1 else writer.load("u", "c")[1])  # type: ignore[index]
    return messages


def test_a_replace_under_a_turn_that_read_from_its_compaction_point_is_not_overwritten(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    _long(store)
    turn = ConversationsService(store)
    loaded = turn.load_recent("u", "c")
    assert loaded is not None and loaded[0]["messages"][0] is UNLOADED
    fresh = {"conversationId": "c", "messages": [{"role": "user", "content": "fresh start"}]}
    ConversationsService(store).save("u", "c", fresh)  # deletes every part the turn did not read
    with pytest.raises(Conflict) as caught:
        turn.append("u", "c", {**loaded[0], "messages": [*loaded[0]["messages"], reply(200)]},
                    fence=Fence("s1", 2), etag=loaded[1], sealed=loaded[2])
    assert caught.value.code == "conversation_replaced"
    assert ConversationsService(store).load("u", "c")[0] == fresh  # type: ignore[index]
    assert iter_all(store, "users/u/conversation-parts/c/") == []


def test_a_new_owner_overwrites_a_stale_runners_save_keeping_the_parts_it_did_not_read(tmp_path: Path) -> None:
    local = LocalDirectoryStore(tmp_path)
    messages = _long(local)
    store = Counting(local)
    owner = ConversationsService(store)  # type: ignore[arg-type]
    loaded = owner.load_recent("u", "c")
    assert loaded is not None
    # The paused runner (epoch 1) saves once more before the new owner's first save.
    stale = ConversationsService(local)
    stale_read = stale.load_recent("u", "c")
    assert stale_read is not None
    late = [{"role": "user", "content": f"LATE {i} " + "l" * 2_000} for i in range(12)]  # enough to seal a part
    stale.append("u", "c", {**stale_read[0], "messages": [*stale_read[0]["messages"], *late]},
                 fence=Fence("s1", 1), etag=stale_read[1], sealed=stale_read[2])
    assert stale_read[2].parts[-1].messages == [*messages[-2:], *late[:-2]]
    store.take()
    mine = [*loaded[0]["messages"], reply(200)]
    owner.append("u", "c", {**loaded[0], "messages": mine}, fence=Fence("s1", 2), etag=loaded[1], sealed=loaded[2])
    _, written = store.take()
    assert [k for k, _ in written if "conversation-parts" in k] == []  # no part written again
    whole = ConversationsService(local).load("u", "c")
    assert whole is not None and whole[0]["messages"] == [*messages, reply(200)]
    assert unnamed(local, ConversationsService(local)) == set()
    # And the stale runner is fenced off from now on.
    with pytest.raises(Conflict):
        stale.append("u", "c", {**stale_read[0], "messages": [*stale_read[0]["messages"], reply(1)]},
                     fence=Fence("s1", 1), etag=stale_read[1], sealed=stale_read[2])


class DiesBeforeTheHead(Counting):
    """A process that dies after sealing a part, before it stores the head naming it."""

    def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        if "/conversations/" in key:
            raise RuntimeError("killed")
        return super().put(key, data, **kwargs)


@pytest.mark.parametrize("age_minutes", [0, 10])
def test_parts_a_dead_writer_left_unnamed_are_swept_at_the_next_chapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        age_minutes: int) -> None:
    monkeypatch.setattr(conversation_parts, "SWEEP_AGE", timedelta(minutes=age_minutes))
    store = LocalDirectoryStore(tmp_path)
    messages = [reply(i) for i in range(700)]
    writer = ConversationsService(store)
    for n in range(1, 21):
        writer.append("u", "c", {"conversationId": "c", "messages": messages[:n]})
    loaded = writer.load_recent("u", "c")
    assert loaded is not None
    dying = ConversationsService(DiesBeforeTheHead(store))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        dying.append("u", "c", {"conversationId": "c", "messages": messages[:40]}, sealed=loaded[2])
    orphans = unnamed(store, writer)
    assert orphans  # sealed, never named
    for n in range(21, 701):  # the survivor goes on, past its next chapter
        writer.append("u", "c", {"conversationId": "c", "messages": messages[:n]})
    assert len(head_of(store)[CHAPTERS_FIELD]) >= 1
    assert unnamed(store, writer) == (set() if age_minutes == 0 else orphans)  # a young one may be in flight: kept
    assert ConversationsService(store).load("u", "c")[0]["messages"] == messages  # type: ignore[index]
