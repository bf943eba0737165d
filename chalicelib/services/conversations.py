"""Conversations: stored whole at `users/{userId}/conversations/{conversationId}.json`.

The REST API and the agent write the same format, `{conversationId, messages, metadata}`, so
a conversation the agent saved can be read over REST and one posted over REST continued.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from chalicelib.errors import BadRequest, NotFound, PayloadTooLarge, PreconditionFailed
from chalicelib.ids import validate_id
from chalicelib.services.models import ApiModel
from chalicelib.services.pagination import decode_cursor, encode_cursor
from chalicelib.storage import ObjectNotFound, ObjectStore, layout
from chalicelib.storage import PreconditionFailed as StoragePreconditionFailed
from chalicelib.storage.base import iter_all

MAX_CONVERSATION_BYTES = 5 * 1024 * 1024


class ConversationSaved(ApiModel):
    status: Literal["saved"] = "saved"
    user_id: str
    conversation_id: str
    key: str


class ConversationDetail(ApiModel):
    user_id: str
    conversation_id: str
    conversation: dict[str, Any]
    metadata: Any
    uploaded: datetime


class ConversationItem(ApiModel):
    conversation_id: str
    size: int
    updated: datetime


class ConversationList(ApiModel):
    user_id: str
    conversations: list[ConversationItem]
    count: int
    next_cursor: str | None


class ConversationDeleted(ApiModel):
    status: Literal["deleted"] = "deleted"
    user_id: str
    conversation_id: str
    key: str


class ConversationsService:
    """The user's conversations in object storage."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def save_body(self, user_id: str, body: Any, if_match: str | None = None, if_none_match: bool = False) -> tuple[ConversationSaved, str]:
        """POST: store the whole body; `conversationId` is required."""
        validate_id(user_id, "userId")
        if not isinstance(body, dict):
            raise BadRequest("The body must be a JSON object with a conversationId.", code="invalid_body")
        conversation_id = body.get("conversationId")
        if conversation_id is None or conversation_id == "":
            raise BadRequest("conversationId is required", code="missing_conversation_id")
        if not isinstance(conversation_id, str):
            raise BadRequest("conversationId must be a string.", code="invalid_conversation_id")
        validate_id(conversation_id, "conversationId")
        if "messages" in body and not isinstance(body["messages"], list):
            raise BadRequest("messages must be a list of {role, content} objects.", code="invalid_messages")
        etag = self.save(user_id, conversation_id, body, if_match=if_match, if_none_match=if_none_match)
        return (
            ConversationSaved(user_id=user_id, conversation_id=conversation_id, key=layout.conversation_key(user_id, conversation_id)),
            etag,
        )

    def save(self, user_id: str, conversation_id: str, body: dict[str, Any], *, if_match: str | None = None, if_none_match: bool = False) -> str:
        """Write a conversation (the agent's path too); return the new ETag."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        if len(data) > MAX_CONVERSATION_BYTES:
            raise PayloadTooLarge(
                f"The conversation is {len(data)} bytes; the limit is {MAX_CONVERSATION_BYTES} bytes (5 MiB). "
                "Start a new conversation or drop old messages.",
                code="conversation_too_large",
            )
        try:
            return self.store.put(
                layout.conversation_key(user_id, conversation_id), data, content_type="application/json",
                if_match=if_match, if_none_match=if_none_match,
            ).etag
        except (StoragePreconditionFailed, ObjectNotFound):
            raise PreconditionFailed(
                f"Conversation {conversation_id!r} "
                + ("already exists (If-None-Match: *)." if if_none_match else "changed since you read it (If-Match).")
                + " GET it for the current ETag and retry."
            ) from None

    def load(self, user_id: str, conversation_id: str) -> tuple[dict[str, Any], str] | None:
        """(body, etag) of a stored conversation, or None."""
        try:
            obj = self.store.get(layout.conversation_key(user_id, conversation_id))
        except ObjectNotFound:
            return None
        try:
            body = json.loads(obj.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"conversationId": conversation_id, "messages": [], "metadata": {"unreadable": True}}
        return body, obj.info.etag

    def get(self, user_id: str, conversation_id: str) -> tuple[ConversationDetail, str]:
        """GET one conversation; 404 "Conversation not found"."""
        key = layout.conversation_key(user_id, conversation_id)
        try:
            obj = self.store.get(key)
        except ObjectNotFound:
            raise NotFound("Conversation not found", code="conversation_not_found") from None
        body = json.loads(obj.body)
        return (
            ConversationDetail(
                user_id=user_id, conversation_id=conversation_id, conversation=body,
                metadata=body.get("metadata") if isinstance(body, dict) else None, uploaded=obj.info.last_modified,
            ),
            obj.info.etag,
        )

    def list(self, user_id: str, limit: int = 100, cursor: str | None = None) -> ConversationList:
        """Newest first. One LIST per 1,000 conversations: S3 lists by key, not by date."""
        prefix = layout.conversations_prefix(user_id)
        after = decode_cursor(cursor)
        items = sorted(
            (o for o in iter_all(self.store, prefix) if o.key.endswith(".json")),
            key=lambda o: (o.last_modified, o.key),
            reverse=True,
        )
        if after is not None:
            try:
                mark = (datetime.fromisoformat(after["m"]), after["k"])
            except (KeyError, TypeError, ValueError):
                raise BadRequest("Invalid cursor: pass back nextCursor unchanged.", code="invalid_cursor") from None
            items = [o for o in items if (o.last_modified, o.key) < mark]
        page = items[:limit]
        more = len(items) > limit
        return ConversationList(
            user_id=user_id,
            conversations=[
                ConversationItem(conversation_id=o.key[len(prefix):-len(".json")], size=o.size, updated=o.last_modified)
                for o in page
            ],
            count=len(page),
            next_cursor=encode_cursor({"m": page[-1].last_modified.isoformat(), "k": page[-1].key}) if more else None,
        )

    def delete(self, user_id: str, conversation_id: str) -> ConversationDeleted:
        """DELETE one conversation; 404 if it is not there."""
        key = layout.conversation_key(user_id, conversation_id)
        try:
            self.store.head(key)
        except ObjectNotFound:
            raise NotFound("Conversation not found", code="conversation_not_found") from None
        self.store.delete(key)
        return ConversationDeleted(user_id=user_id, conversation_id=conversation_id, key=key)
