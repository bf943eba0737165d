"""Conversations: at `users/{userId}/conversations/{conversationId}.json`, long ones in parts.

The REST API and the agent write the same format, `{conversationId, messages, metadata}`, so
a conversation the agent saved can be read over REST and one posted over REST continued. A
turn appends (`append`): past 16 KiB, earlier messages are sealed into immutable parts (see
`conversation_parts`), so a save costs the same however long the history; GET puts the whole
body back together, and a turn reads only the parts its working context needs (`load_recent`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from chalicelib import safejson
from chalicelib.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ValidationFailed,
)
from chalicelib.ids import validate_id
from chalicelib.services.conversation_parts import (
    ConversationParts,
    HistoryReplaced,
    PartsMissing,
    Sealed,
    context_from,
)
from chalicelib.services.limits import MAX_CONVERSATION_BYTES
from chalicelib.services.models import ApiModel
from chalicelib.services.pagination import decode_cursor, encode_cursor
from chalicelib.storage import ObjectNotFound, ObjectStore, layout
from chalicelib.storage import PreconditionFailed as StoragePreconditionFailed
from chalicelib.storage.base import ObjectInfo
from chalicelib.storage.listing import iter_all

#: Conditional writes a fenced save tries before giving up (each retry follows a write by
#: someone else that the fence allowed to be overwritten: a REST replace, an older epoch).
FENCED_ATTEMPTS = 5


@dataclass(frozen=True)
class Fence:
    """A turn runner's fencing token (see realtime/lease.py): its session and lease epoch.

    A fenced save stamps it in the head's metadata (`sessionId`, `leaseEpoch`) and is refused
    once the stored head carries a newer epoch of the same session."""

    session_id: str
    epoch: int


class FencedOut(Conflict):
    """A write by a runner whose lease was taken over: refused, nothing written."""

    code = "lease_lost"


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
        self.parts = ConversationParts(store)

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
        # The parts the head being replaced names (a GET, Class B: cheaper than listing them).
        before = self._named_parts(user_id, conversation_id) if not if_none_match else set()
        try:
            etag = self.store.put(
                layout.conversation_key(user_id, conversation_id), data, content_type="application/json",
                if_match=if_match, if_none_match=if_none_match,
            ).etag
            # Replaced whole: the parts the new body does not name are referenced by nothing now.
            self.parts.forget(user_id, conversation_id)
            self.parts.delete_unreferenced(user_id, conversation_id, before, self.parts.named(user_id, conversation_id, body))
            return etag
        except (StoragePreconditionFailed, ObjectNotFound):
            raise PreconditionFailed(
                f"Conversation {conversation_id!r} "
                + ("already exists (If-None-Match: *)." if if_none_match else "changed since you read it (If-Match).")
                + " GET it for the current ETag and retry."
            ) from None

    def append(self, user_id: str, conversation_id: str, body: dict[str, Any], *, fence: Fence | None = None,
               etag: str | None = None, sealed: Sealed | None = None) -> str:
        """A turn's save of the whole conversation: only the head and any newly sealed part
        are written, so it never fails for the conversation's size. Return the head's ETag.

        `sealed` is the layout `load_recent` returned (updated here); the body's messages may
        then hold `UNLOADED` for those it did not read. Without it, the layout this process's
        earlier saves without one left is used (none at first: everything is sealed afresh).

        With a `fence`, the write is conditional on `etag` (the head as last read or written;
        None: no head yet). When the head changed meanwhile it is read again: a newer epoch of
        the same session refuses the write (FencedOut); anything else (a REST replace, a stale
        runner's write that got in before the new owner's first save) is overwritten, as an
        unfenced save would. A head that does not parse is never overwritten."""
        key = layout.conversation_key(user_id, conversation_id)
        if sealed is None:
            sealed = self.parts.remembered(user_id, conversation_id)
        if fence is None:
            head = self._head(user_id, conversation_id, body, sealed)
            etag = self.store.put(key, head, content_type="application/json").etag
            self.parts.confirmed(user_id, conversation_id, sealed)
            return etag
        metadata = dict(body.get("metadata") or {})
        metadata.update({"sessionId": fence.session_id, "leaseEpoch": fence.epoch})
        fenced = {**body, "metadata": metadata}
        head = self._head(user_id, conversation_id, fenced, sealed)
        expected = etag
        for _ in range(FENCED_ATTEMPTS):
            try:
                stored = self.store.put(key, head, content_type="application/json", if_match=expected,
                                        if_none_match=expected is None).etag
                self.parts.confirmed(user_id, conversation_id, sealed)
                return stored
            except StoragePreconditionFailed:
                expected, current = self._check_fence(user_id, conversation_id, fence)
                self._after_overwrite(user_id, conversation_id, fenced, sealed, current, fence)
                head = self._head(user_id, conversation_id, fenced, sealed)
        raise Conflict(f"Conversation {conversation_id!r} kept changing while the turn saved it; the turn stopped.",
                       code="conversation_contention")

    def _head(self, user_id: str, conversation_id: str, body: dict[str, Any], sealed: Sealed) -> bytes:
        try:
            return self.parts.head_for_append(user_id, conversation_id, body, sealed)
        except HistoryReplaced as exc:
            raise _replaced(conversation_id, str(exc)) from None

    def _after_overwrite(self, user_id: str, conversation_id: str, body: dict[str, Any], sealed: Sealed,
                         current: dict[str, Any] | None, fence: Fence) -> None:
        """Someone else wrote the head this save is about to overwrite. A stale runner of the
        same session only ever adds parts, so ours are still there when it names them; any
        other writer (a REST replace, `clear`) deletes the parts it stopped naming, so the
        messages are sealed afresh (reading first those this turn had not read)."""
        named = self.parts.named(user_id, conversation_id, current) if current is not None else set()
        metadata = current.get("metadata") if current is not None else None
        same_session = isinstance(metadata, dict) and metadata.get("sessionId") == fence.session_id
        # What the head being overwritten names and this save will not: referenced by nothing
        # once it is stored (a stale runner's newly sealed parts, say).
        sealed.superseded |= named - sealed.keys()
        if same_session and sealed.keys() - sealed.unconfirmed <= named:
            return
        try:
            self.parts.fill(conversation_id, sealed, body["messages"])
        except HistoryReplaced as exc:
            raise _replaced(conversation_id, str(exc)) from None
        # Ours, never named by a head that stayed: nothing references them.
        self.parts.delete_unreferenced(user_id, conversation_id, sealed.unconfirmed - named, set())
        # Sealed afresh: what the overwritten head names goes once this save's head is stored.
        sealed.chapters, sealed.parts, sealed.unconfirmed, sealed.superseded = [], [], set(), set(named)

    def _named_parts(self, user_id: str, conversation_id: str) -> set[str]:
        """The parts the stored head names (none when there is no head or it does not parse)."""
        try:
            stored = safejson.loads(self.store.get(layout.conversation_key(user_id, conversation_id)).body)
        except (ObjectNotFound, ValueError):
            return set()
        return self.parts.named(user_id, conversation_id, stored) if isinstance(stored, dict) else set()

    def _check_fence(self, user_id: str, conversation_id: str, fence: Fence) -> tuple[str | None, dict[str, Any] | None]:
        """The stored head's ETag and body (None: no head), after checking `fence` may overwrite it."""
        try:
            obj = self.store.get(layout.conversation_key(user_id, conversation_id))
        except ObjectNotFound:
            return None, None
        stored = self._parse(conversation_id, obj.body)
        metadata = stored.get("metadata")
        if isinstance(metadata, dict) and metadata.get("sessionId") == fence.session_id:
            epoch = metadata.get("leaseEpoch")
            if isinstance(epoch, int) and epoch > fence.epoch:
                raise FencedOut(
                    f"Conversation {conversation_id!r} was saved under lease epoch {epoch} of session "
                    f"{fence.session_id!r}; this runner's epoch {fence.epoch} is older: another runner owns the turn.",
                )
        return obj.info.etag, stored

    @staticmethod
    def _parse(conversation_id: str, data: bytes) -> dict[str, Any]:
        """A stored head, or ConversationUnreadable: a turn never overwrites what it cannot read."""
        try:
            body = safejson.loads(data)
        except ValueError as exc:
            raise ConversationUnreadable(conversation_id, str(exc)) from None
        if not isinstance(body, dict):
            raise ConversationUnreadable(conversation_id, "it is not a JSON object")
        return body

    def _read(self, user_id: str, conversation_id: str, need: Any = 0, *,
              served: bool = False) -> tuple[Any, str, Sealed, datetime] | None:
        """(body put back together, ETag, layout, last modified) of a stored conversation, or None.

        `need`: the first message wanted (0: all), or a callable giving it from the stored head.
        `served` (GET): a stored JSON value that is not an object is returned as it is. A head
        that does not parse raises ConversationUnreadable; one naming a missing part is
        read once more (a whole replace may have deleted it between the two reads), then
        reported as incomplete."""
        for attempt in range(2):
            try:
                obj = self.store.get(layout.conversation_key(user_id, conversation_id))
            except ObjectNotFound:
                return None
            # One that does not parse is reported, never taken for an empty one: a turn would save
            # its reply over it and the history would be gone.
            if served:
                try:
                    value = safejson.loads(obj.body)
                except ValueError as exc:
                    raise ConversationUnreadable(conversation_id, str(exc)) from None
                if not isinstance(value, dict):
                    return value, obj.info.etag, Sealed(), obj.info.last_modified
            body = self._parse(conversation_id, obj.body)
            try:
                whole, sealed = self.parts.read(user_id, conversation_id, body, need(body) if callable(need) else need)
                return whole, obj.info.etag, sealed, obj.info.last_modified
            except PartsMissing as exc:
                if attempt == 0:
                    continue
                raise ValidationFailed(
                    f"Conversation {conversation_id!r} is stored incompletely ({exc}): it was changed outside the API. "
                    "DELETE it, or rewrite it with POST.",
                    code="conversation_incomplete",
                ) from None
        raise AssertionError("unreachable")

    def load(self, user_id: str, conversation_id: str) -> tuple[dict[str, Any], str] | None:
        """(body, etag) of a stored conversation, or None; ConversationUnreadable when its head
        does not parse."""
        read = self._read(user_id, conversation_id)
        return (read[0], read[1]) if read is not None else None

    def load_recent(self, user_id: str, conversation_id: str) -> tuple[dict[str, Any], str, Sealed] | None:
        """What a turn reads: like `load`, but the sealed parts before the working context (the
        compaction point recorded in the head's metadata, `contextFrom`) are not read; their
        messages are `UNLOADED`. Pass the layout to `append` and to `load_rest`."""
        read = self._read(user_id, conversation_id, lambda head: max(0, context_from(head) - 1))
        return (read[0], read[1], read[2]) if read is not None else None

    def load_rest(self, conversation_id: str, sealed: Sealed, messages: list[dict[str, Any]]) -> None:
        """Put the messages `load_recent` left out in place of their `UNLOADED` entries."""
        try:
            self.parts.fill(conversation_id, sealed, messages)
        except HistoryReplaced as exc:
            raise _replaced(conversation_id, str(exc)) from None

    def get(self, user_id: str, conversation_id: str) -> tuple[ConversationDetail, str]:
        """GET one conversation; 404 "Conversation not found"."""
        try:
            read = self._read(user_id, conversation_id, served=True)
        except ConversationUnreadable as exc:
            # Only a write around the API stores such a body (REST bodies are parsed the same way).
            raise ValidationFailed(
                f"Conversation {conversation_id!r} is stored but cannot be served: {exc.detail} "
                "It was written outside the API; DELETE it, or rewrite it with POST.",
                code="conversation_unreadable",
            ) from None
        if read is None:
            raise NotFound("Conversation not found", code="conversation_not_found") from None
        body, etag, _, modified = read
        return (
            ConversationDetail(
                user_id=user_id, conversation_id=conversation_id, conversation=body,
                metadata=body.get("metadata") if isinstance(body, dict) else None, uploaded=modified,
            ),
            etag,
        )

    def list(self, user_id: str, limit: int = 100, cursor: str | None = None) -> ConversationList:
        """Newest first, and paging never skips a conversation that existed when it began.

        One LIST per 1,000 conversations: S3 lists by key, not by date, so every page lists
        them all and sorts. Sorting by date alone let a conversation saved during the paging
        jump ahead of the cursor and be skipped. So the first page fixes a snapshot time T (the
        newest date then) and the order is: phase 1, conversations dated <= T, newest first;
        then phase 2, those dated after T (saved since), by key. A conversation saved while
        a client pages leaves phase 1 and is met in phase 2, so it comes at the end (perhaps a
        second time), never not at all.
        """
        prefix = layout.conversations_prefix(user_id)
        objects = [o for o in iter_all(self.store, prefix) if o.key.endswith(".json")]
        snap = _Snapshot.parse(decode_cursor(cursor)) if cursor is not None else _Snapshot.first(objects, prefix)
        if snap is None:
            return ConversationList(user_id=user_id, conversations=[], count=0, next_cursor=None)
        phase1 = sorted((o for o in objects if o.last_modified <= snap.time), key=lambda o: (o.last_modified, o.key), reverse=True)
        phase2 = sorted((o for o in objects if snap.saved_since(o, prefix)), key=lambda o: o.key)
        if snap.phase == 1 and snap.mark is not None:
            phase1 = [o for o in phase1 if (o.last_modified, o.key) < snap.mark]
        if snap.phase == 2:
            phase1 = []
            phase2 = [o for o in phase2 if snap.mark_key is None or o.key > snap.mark_key]
        sequence = phase1 + phase2
        page = sequence[:limit]
        next_cursor = None
        if len(sequence) > limit:
            last = page[-1]
            in_phase1 = len(page) <= len(phase1)
            next_cursor = encode_cursor(snap.after(last, phase=1 if in_phase1 else 2))
        return ConversationList(
            user_id=user_id,
            conversations=[
                ConversationItem(conversation_id=o.key[len(prefix):-len(".json")], size=o.size, updated=o.last_modified)
                for o in page
            ],
            count=len(page),
            next_cursor=next_cursor,
        )

    def delete(self, user_id: str, conversation_id: str) -> ConversationDeleted:
        """DELETE one conversation; 404 if it is not there."""
        key = layout.conversation_key(user_id, conversation_id)
        try:
            self.store.head(key)
        except ObjectNotFound:
            raise NotFound("Conversation not found", code="conversation_not_found") from None
        self.store.delete(key)
        self.parts.delete_all(user_id, conversation_id)
        return ConversationDeleted(user_id=user_id, conversation_id=conversation_id, key=key)


class ConversationUnreadable(ValidationFailed):
    """A stored conversation head that does not parse: kept as it is, never overwritten."""

    code = "conversation_unreadable"

    def __init__(self, conversation_id: str, detail: str) -> None:
        self.detail = detail
        super().__init__(
            f"Conversation {conversation_id!r} is stored but cannot be read ({detail}); it is kept as it is and "
            "nothing was written. GET /users/{userId}/conversations/{conversationId} shows it; rewrite it with POST "
            "or DELETE it, or start another conversation.",
        )


def _replaced(conversation_id: str, detail: str) -> Conflict:
    return Conflict(
        f"Conversation {conversation_id!r} was replaced while the turn ran (a REST POST or clear): the earlier "
        f"messages this turn had not read are gone ({detail}). Nothing was written; send the message again.",
        code="conversation_replaced",
    )


#: The ids of conversations dated exactly T ride in the cursor (so they are not repeated in
#: phase 2) up to this many; past it they may come twice.
MAX_SNAPSHOT_IDS = 100


@dataclass(frozen=True)
class _Snapshot:
    """What a conversations cursor carries: the snapshot time, the phase and the last item."""

    time: datetime
    newest: frozenset[str] | None  # ids dated exactly `time` at the first page (None: too many)
    phase: int = 1
    mark: tuple[datetime, str] | None = None  # phase 1: (date, key) of the last item served
    mark_key: str | None = None  # phase 2: key of the last item served

    @classmethod
    def first(cls, objects: list[ObjectInfo], prefix: str) -> _Snapshot | None:
        if not objects:
            return None
        newest_time = max(o.last_modified for o in objects)
        ids = [o.key[len(prefix):-len(".json")] for o in objects if o.last_modified == newest_time]
        return cls(time=newest_time, newest=frozenset(ids) if len(ids) <= MAX_SNAPSHOT_IDS else None)

    @classmethod
    def parse(cls, state: dict[str, Any] | None) -> _Snapshot:
        try:
            assert state is not None
            newest = state["n"]
            phase = state["p"]
            if phase not in (1, 2) or not (newest is None or (isinstance(newest, list) and all(isinstance(i, str) for i in newest))):
                raise ValueError(phase)
            return cls(
                time=datetime.fromisoformat(state["t"]),
                newest=None if newest is None else frozenset(newest),
                phase=phase,
                mark=(datetime.fromisoformat(state["m"]), str(state["k"])) if phase == 1 else None,
                mark_key=str(state["k"]) if phase == 2 else None,
            )
        except (AssertionError, KeyError, TypeError, ValueError):
            raise BadRequest("Invalid cursor: pass back nextCursor unchanged, or omit it to start over.", code="invalid_cursor") from None

    def saved_since(self, info: ObjectInfo, prefix: str) -> bool:
        """True for phase 2: saved after the snapshot (a same-tick save is dated exactly T)."""
        if info.last_modified > self.time:
            return True
        return info.last_modified == self.time and (self.newest is None or info.key[len(prefix):-len(".json")] not in self.newest)

    def after(self, last: ObjectInfo, phase: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "t": self.time.isoformat(), "n": None if self.newest is None else sorted(self.newest), "p": phase, "k": last.key,
        }
        if phase == 1:
            state["m"] = last.last_modified.isoformat()
        return state
