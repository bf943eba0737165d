"""Sealing and reassembling conversation parts (the layout behind item 10 of issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.errors import ValidationFailed
from chalicelib.services.conversations import ConversationsService
from chalicelib.storage.base import iter_all
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
