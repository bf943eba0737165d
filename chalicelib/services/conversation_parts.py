"""Conversations stored as a small head plus sealed, immutable parts, so a save costs the same
at message 10 and at message 10,000.

A conversation is one object at `users/{u}/conversations/{id}.json` (the head) in the format
the REST API reads: `{conversationId, messages, metadata}`. A turn's save rewrites the head, so
the head holds only a recent tail: once it would pass `SEAL_BYTES` (16 KiB), all but its last
`KEEP_TAIL` messages are sealed into a part at `users/{u}/conversation-parts/{id}/…` (written
before the head that names it, never overwritten), and the head names the parts in order:

    "$parts":    [name, …]         the latest parts (at most MAX_HEAD_PARTS), by name under the prefix
    "$counts":   [n, …]            how many messages each of them holds
    "$chapters": [[name, n], …]    immutable objects naming MAX_HEAD_PARTS earlier parts each
                                   ({"parts": [...], "counts": [...]}), and their message count

When the head would name more than MAX_HEAD_PARTS parts, the oldest of them are written into a
chapter, so the head names at most 64 parts (about 1.5 KB, 750 KB of 2 KB replies: a whole
working context, read in one round trip after the head's) plus a 30-byte reference per chapter
(one per 64 parts), and every save writes at most about SEAL_BYTES plus the new messages.

Readers put the messages back together (`read`, with `need=0`), so GET returns the whole body.
A turn reads only what its working context needs (`need`: the compaction point the head's
metadata records as `contextFrom`): the parts before it are not fetched, and their messages are
the `UNLOADED` placeholder in the list, which a save recognises (by identity) and never writes.

Heads of earlier layouts stay readable: without `$parts` (all messages in the head), and with
`$parts` but no `$counts` (1 MiB parts): such a head is read whole and rewritten in this layout
at its first save. Parts are written before the head that names them, so a crash in between
leaves an unnamed part, never a head naming a missing one; the writer deletes such parts once it
knows no head names them (see `ConversationsService.append`), and a whole replace (REST POST,
`clear`) deletes every part the replaced head named that the new one does not.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib import safejson
from chalicelib.storage import ObjectStore, layout
from chalicelib.storage.base import StorageError, get_many
from chalicelib.storage.listing import iter_all

log = logging.getLogger(__name__)

#: The head's messages are sealed into a part once the head would pass this size.
SEAL_BYTES = 16 * 1024
#: The newest messages stay in the head when it is sealed: a cut-off turn's repair answers the
#: last tool call in the message after it, so those are never in an immutable part.
KEEP_TAIL = 2
#: The most one part holds when a long tail is sealed at once (a REST-posted body).
PART_BYTES = 64 * 1024
#: The most parts the head names itself; older ones are named by chapters.
MAX_HEAD_PARTS = 64
#: Keys in a stored head that describe its layout; never returned to readers.
PARTS_FIELD = "$parts"
COUNTS_FIELD = "$counts"
CHAPTERS_FIELD = "$chapters"
LAYOUT_FIELDS = (PARTS_FIELD, COUNTS_FIELD, CHAPTERS_FIELD)
#: The metadata field where a turn records the first message its working context needs.
CONTEXT_FROM_FIELD = "contextFrom"
#: Parts are immutable, so their bytes can be kept in memory: a warm process reads only heads.
CACHE_BYTES = 16 * 1024 * 1024
_REMEMBERED = 64
#: A part no head names is swept once it is this old: by then the writer that sealed it has
#: stored its head or died (a paused one is fenced off: its head write is refused).
SWEEP_AGE = timedelta(minutes=10)

#: Stands for a sealed message a turn did not read (before its working context). One object,
#: compared by identity; its text is unique per process, so no real message's digest matches it.
UNLOADED: dict[str, Any] = {"role": "user", "content": [{"type": "text", "text": f"[not loaded {uuid.uuid4().hex}]"}]}


class PartsMissing(Exception):
    """A head names a part that is not stored or does not parse (written around the API)."""


class HistoryReplaced(Exception):
    """The messages a turn did not read were deleted under it (the conversation was replaced)."""


@dataclass
class Part:
    """One sealed part: its key, how many messages it holds, and those messages once read."""

    key: str
    count: int
    messages: list[dict[str, Any]] | None = None


@dataclass
class Chapter:
    """An immutable object naming earlier parts; `parts` once it was read."""

    key: str
    count: int
    parts: list[Part] | None = None


@dataclass
class Sealed:
    """What one reader or writer knows of a conversation's sealed messages, in order."""

    chapters: list[Chapter] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    # Written by this writer but not yet named by a head it saw land: deleted if none ever does.
    unconfirmed: set[str] = field(default_factory=set)
    # Named by an earlier head, no longer by this layout (history rewritten): deleted once a
    # head naming this layout is stored.
    superseded: set[str] = field(default_factory=set)
    # A chapter was written: the next stored head sweeps what no head names.
    sweep: bool = False

    @property
    def count(self) -> int:
        return sum(c.count for c in self.chapters) + sum(p.count for p in self.parts)

    def keys(self) -> set[str]:
        """Every object this layout names (chapters, their parts once read, the head's parts)."""
        keys = {c.key for c in self.chapters} | {p.key for p in self.parts}
        for chapter in self.chapters:
            keys |= {p.key for p in chapter.parts or []}
        return keys


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def context_from(body: dict[str, Any]) -> int:
    """The first message a turn's working context needs, as the head's metadata records it (0: all)."""
    metadata = body.get("metadata")
    value = metadata.get(CONTEXT_FROM_FIELD) if isinstance(metadata, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class ConversationParts:
    """Seals and reads conversation parts; caches their bytes (they never change)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._known: OrderedDict[str, Sealed] = OrderedDict()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------

    def read(self, user_id: str, conversation_id: str, body: dict[str, Any], need: int = 0) -> tuple[dict[str, Any], Sealed]:
        """The body with its messages put back together, and the layout it was read from.

        Messages before `need` are read only when a part holding them is needed anyway;
        the others are `UNLOADED`. Heads without `$counts` (the earlier layout) are read whole."""
        prefix = layout.conversation_parts_prefix(user_id, conversation_id)
        sealed = self._layout(conversation_id, body, prefix)
        whole = {k: v for k, v in body.items() if k not in LAYOUT_FIELDS}
        tail = list(body.get("messages") or [])
        if sealed is None:
            # The earlier layout: parts of unknown length, all read; saved in this one next time.
            keys = self._names(conversation_id, body.get(PARTS_FIELD), prefix)
            found = self._fetch(conversation_id, keys)
            sealed = Sealed(parts=[Part(k, len(found[k]), found[k]) for k in keys])
        else:
            self._load(conversation_id, sealed, need)
        messages: list[dict[str, Any]] = []
        for part in self._flat(sealed):
            messages.extend(part.messages if part.messages is not None else [UNLOADED] * part.count)
        whole["messages"] = messages + tail
        return whole, sealed

    def fill(self, conversation_id: str, sealed: Sealed, messages: list[dict[str, Any]]) -> None:
        """Read what `sealed` did not, and put it in place of the `UNLOADED` entries of `messages`
        (raises HistoryReplaced when those parts are gone)."""
        try:
            self._load(conversation_id, sealed, 0)
        except PartsMissing as exc:
            raise HistoryReplaced(str(exc)) from None
        offset = 0
        for part in self._flat(sealed):
            assert part.messages is not None
            for i, message in enumerate(part.messages):
                if offset + i < len(messages) and messages[offset + i] is UNLOADED:
                    messages[offset + i] = message
            offset += part.count

    def named(self, user_id: str, conversation_id: str, body: dict[str, Any]) -> set[str]:
        """Every part and chapter a stored head names (chapters are read for their parts)."""
        prefix = layout.conversation_parts_prefix(user_id, conversation_id)
        try:
            sealed = self._layout(conversation_id, body, prefix)
            if sealed is None:
                return set(self._names(conversation_id, body.get(PARTS_FIELD), prefix))
            self._load_chapters(conversation_id, sealed.chapters)
            return sealed.keys()
        except PartsMissing:
            # What is still readable of it: its own names (a chapter that is gone names nothing).
            names = body.get(PARTS_FIELD), [c[0] for c in body.get(CHAPTERS_FIELD) or [] if isinstance(c, list) and c]
            keys = {k if k.startswith(prefix) else prefix + k for group in names if isinstance(group, list)
                    for k in group if isinstance(k, str)}
            return {k for k in keys if _inside(k, prefix)}

    # -- writing ---------------------------------------------------------------------------

    def head_for_append(self, user_id: str, conversation_id: str, body: dict[str, Any], sealed: Sealed | None = None) -> bytes:
        """The head to store for `body` (whole messages, `UNLOADED` where not read), sealing parts
        first when it is big. `sealed` (the layout the caller read; else what this process last
        knew) is updated to what the head names.

        Sealed parts are kept while the body's first messages are the ones they hold (a turn
        appends); from the first that differs (history rewritten), messages are sealed afresh."""
        if sealed is None:
            sealed = self.remembered(user_id, conversation_id)
        messages = list(body.get("messages") or [])
        offset = self._keep_matching(sealed, messages)
        tail = messages[offset:]
        if any(m is UNLOADED for m in tail):
            raise HistoryReplaced(f"conversation {conversation_id!r}: messages that were not read changed")
        prefix = layout.conversation_parts_prefix(user_id, conversation_id)
        head = self._head(body, sealed, tail)
        if len(head) > SEAL_BYTES and len(tail) > KEEP_TAIL:
            for chunk in _chunks(tail[:-KEEP_TAIL]):
                key = self._unique(prefix, f"{len(sealed.parts) + len(sealed.chapters) * MAX_HEAD_PARTS + 1:06d}")
                data = encode(chunk)
                self.store.put(key, data, content_type="application/json")  # type: ignore[arg-type]
                sealed.unconfirmed.add(key)
                self._cache_put(key, data)
                sealed.parts.append(Part(key, len(chunk), list(chunk)))
            tail = tail[-KEEP_TAIL:]
            while len(sealed.parts) > MAX_HEAD_PARTS:
                self._write_chapter(sealed, prefix)
            head = self._head(body, sealed, tail)
        return head

    def confirmed(self, user_id: str, conversation_id: str, sealed: Sealed) -> None:
        """A head naming `sealed` was stored: what this writer sealed is referenced now, and
        what the layout stopped naming (a rewritten history) is referenced by nothing."""
        sealed.unconfirmed.clear()
        gone, sealed.superseded = sealed.superseded - sealed.keys(), set()
        sweep, sealed.sweep = sealed.sweep, False
        try:
            if gone:
                self.delete_unreferenced(user_id, conversation_id, gone, set())
            if sweep:
                self.sweep(user_id, conversation_id, sealed)
        except (StorageError, PartsMissing) as exc:
            # The save stands (retrying it would not help): what was not deleted now is an
            # unnamed part, which the next chapter's sweep deletes.
            log.warning("deleting the unnamed parts of conversation %s failed: %s", conversation_id, exc)

    def sweep(self, user_id: str, conversation_id: str, sealed: Sealed) -> int:
        """Delete the parts and chapters that `sealed` (the stored head's layout) does not name
        and that are older than SWEEP_AGE: sealed by a process that died before it stored the
        head naming them. One listing, run once per chapter (every 64 parts)."""
        self._load_chapters(conversation_id, sealed.chapters)
        named = sealed.keys()
        cutoff = datetime.now(UTC) - SWEEP_AGE
        prefix = layout.conversation_parts_prefix(user_id, conversation_id)
        stale = {o.key for o in iter_all(self.store, prefix) if o.key not in named and o.last_modified < cutoff}
        return self.delete_unreferenced(user_id, conversation_id, stale, set()) if stale else 0

    def remembered(self, user_id: str, conversation_id: str) -> Sealed:
        """The layout this process's saves without one of their own (`append` without `sealed`)
        keep of a conversation: empty at first (its first save then seals afresh)."""
        with self._lock:
            key = f"{user_id}/{conversation_id}"
            sealed = self._known.get(key)
            if sealed is None:
                sealed = self._known[key] = Sealed()
            self._known.move_to_end(key)
            while len(self._known) > _REMEMBERED:
                self._known.popitem(last=False)
            return sealed

    def forget(self, user_id: str, conversation_id: str) -> None:
        """The conversation was replaced whole (REST POST, clear): its old parts no longer count."""
        with self._lock:
            self._known.pop(f"{user_id}/{conversation_id}", None)

    def delete_unreferenced(self, user_id: str, conversation_id: str, before: set[str], keep: set[str]) -> int:
        """Delete the parts and chapters in `before` that `keep` does not hold (this
        conversation's own objects only, whatever a stored head says)."""
        prefix = layout.conversation_parts_prefix(user_id, conversation_id)
        keys = sorted(k for k in before - keep if _inside(k, prefix))
        with self._lock:
            for key in keys:
                self._cached_bytes -= len(self._cache.pop(key, b""))
        return self.store.delete_many(keys) if keys else 0

    def delete_all(self, user_id: str, conversation_id: str) -> int:
        """Delete every part (named by a head or not)."""
        self.forget(user_id, conversation_id)
        keys = [o.key for o in iter_all(self.store, layout.conversation_parts_prefix(user_id, conversation_id))]
        return self.store.delete_many(keys) if keys else 0

    def drop_cache(self) -> None:
        """Forget the parts kept in memory: the next reads fetch them (a cold process)."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    # -- inside ----------------------------------------------------------------------------

    def _layout(self, conversation_id: str, body: dict[str, Any], prefix: str) -> Sealed | None:
        """The layout a head names; None for the earlier one (parts without counts)."""
        parts, counts, chapters = body.get(PARTS_FIELD), body.get(COUNTS_FIELD), body.get(CHAPTERS_FIELD)
        if parts in (None, []) and chapters in (None, []) and counts in (None, []):
            return Sealed()
        if counts is None and not chapters:
            return None
        keys = self._names(conversation_id, parts or [], prefix, relative=True)
        if not (isinstance(counts, list) and len(counts) == len(keys) and all(_count(n) for n in counts)):
            raise PartsMissing(f"the head of conversation {conversation_id!r} has no valid {COUNTS_FIELD}")
        if not isinstance(chapters, list) or not all(isinstance(c, list) and len(c) == 2 and _count(c[1]) for c in chapters):
            raise PartsMissing(f"the head of conversation {conversation_id!r} has no valid {CHAPTERS_FIELD}")
        chapter_keys = self._names(conversation_id, [c[0] for c in chapters], prefix, relative=True)
        return Sealed(chapters=[Chapter(k, c[1]) for k, c in zip(chapter_keys, chapters, strict=True)],
                      parts=[Part(k, n) for k, n in zip(keys, counts, strict=True)])

    @staticmethod
    def _names(conversation_id: str, names: Any, prefix: str, *, relative: bool = False) -> list[str]:
        """The keys `names` stand for: keys (the 1 MiB layout) or names under `prefix` (this one)."""
        if not isinstance(names, list) or not all(isinstance(k, str) for k in names):
            raise PartsMissing(f"the head of conversation {conversation_id!r} does not name its parts as strings")
        keys = [prefix + k for k in names] if relative else list(names)
        if not all(_inside(k, prefix) for k in keys):
            # Only this conversation's own parts are ever read, whatever a stored head says.
            raise PartsMissing(f"the head of conversation {conversation_id!r} names parts outside {prefix}")
        return keys

    def _load(self, conversation_id: str, sealed: Sealed, need: int) -> None:
        """Read the chapters and parts holding messages from `need` on (two round trips at most)."""
        offset, wanted_chapters = 0, []
        for chapter in sealed.chapters:
            if offset + chapter.count > need and chapter.parts is None:
                wanted_chapters.append(chapter)
            offset += chapter.count
        self._load_chapters(conversation_id, wanted_chapters)
        offset, wanted = 0, []
        for part in self._flat(sealed):
            if part.count and offset + part.count > need and part.messages is None:
                wanted.append(part)
            offset += part.count
        found = self._fetch(conversation_id, [p.key for p in wanted])
        for part in wanted:
            if len(found[part.key]) != part.count:
                raise PartsMissing(f"part {part.key} of conversation {conversation_id!r} holds "
                                   f"{len(found[part.key])} messages, not {part.count}")
            part.messages = found[part.key]

    def _load_chapters(self, conversation_id: str, chapters: list[Chapter]) -> None:
        wanted = [c for c in chapters if c.parts is None]
        if not wanted:
            return
        found = self._fetch(conversation_id, [c.key for c in wanted], kind=dict)
        for chapter in wanted:
            listed: dict[str, Any] = found[chapter.key]
            names, counts = listed.get("parts"), listed.get("counts")
            prefix = chapter.key.rsplit("/", 1)[0] + "/"
            if not (isinstance(names, list) and isinstance(counts, list) and len(names) == len(counts)
                    and all(isinstance(k, str) and _inside(prefix + k, prefix) and _count(n)
                            for k, n in zip(names, counts, strict=True))
                    and sum(counts) == chapter.count):
                raise PartsMissing(f"chapter {chapter.key} of conversation {conversation_id!r} is not a list of its parts")
            chapter.parts = [Part(prefix + k, n) for k, n in zip(names, counts, strict=True)]

    def _fetch(self, conversation_id: str, keys: list[str], kind: type = list) -> dict[str, Any]:
        """Each key's parsed body (from the cache when it holds it); PartsMissing for one that
        is not stored, does not parse or is not a `kind`."""
        raw: dict[str, bytes] = {}
        with self._lock:
            for key in keys:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    raw[key] = self._cache[key]
        found = get_many(self.store, [k for k in keys if k not in raw])
        out: dict[str, Any] = {}
        for key in keys:
            data = raw.get(key)
            if data is None:
                stored = found.get(key)
                if stored is None:
                    raise PartsMissing(f"part {key} of conversation {conversation_id!r} is missing")
                data = stored.body
            try:
                # A part is stored data like the head, so it is parsed as guardedly.
                value = safejson.loads(data)
            except ValueError as exc:
                raise PartsMissing(f"part {key} of conversation {conversation_id!r} is unreadable: {exc}") from None
            if not isinstance(value, kind) or (isinstance(value, list) and not all(isinstance(m, dict) for m in value)):
                raise PartsMissing(f"part {key} of conversation {conversation_id!r} is not a list of messages"
                                   if kind is list else f"chapter {key} of conversation {conversation_id!r} is unreadable")
            out[key] = value
            if key not in raw:
                self._cache_put(key, data)
        return out

    def _cache_put(self, key: str, data: bytes) -> None:
        if len(data) > CACHE_BYTES // 8:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._cached_bytes += len(data)
            while self._cached_bytes > CACHE_BYTES:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped)

    @staticmethod
    def _flat(sealed: Sealed) -> list[Part]:
        """Every part in order; a chapter not read stands as one part of its count."""
        flat: list[Part] = []
        for chapter in sealed.chapters:
            flat.extend(chapter.parts if chapter.parts is not None else [Part(chapter.key, chapter.count)])
        return flat + sealed.parts

    @staticmethod
    def _keep_matching(sealed: Sealed, messages: list[dict[str, Any]]) -> int:
        """Drop the sealed parts from the first whose messages `messages` no longer starts with
        (they go to `superseded`); return how many messages the kept ones hold."""

        def same(offset: int, part_messages: list[dict[str, Any]] | None, count: int) -> bool:
            chunk = messages[offset:offset + count]
            if len(chunk) != count:
                return False
            if part_messages is None:
                return all(m is UNLOADED for m in chunk)
            return all(a is b or a is UNLOADED or a == b for a, b in zip(chunk, part_messages, strict=True))

        offset = 0
        for c, chapter in enumerate(sealed.chapters):
            start, kept = offset, True
            for part in chapter.parts if chapter.parts is not None else [Part(chapter.key, chapter.count)]:
                if not same(offset, part.messages, part.count):
                    kept = False
                    break
                offset += part.count
            if not kept:
                # A rewritten history inside this chapter: everything from it on is sealed afresh.
                for dropped in sealed.chapters[c:]:
                    sealed.superseded |= {dropped.key} | {p.key for p in dropped.parts or []}
                sealed.superseded |= {p.key for p in sealed.parts}
                del sealed.chapters[c:]
                sealed.parts.clear()
                return start
        for p, part in enumerate(sealed.parts):
            if not same(offset, part.messages, part.count):
                sealed.superseded |= {q.key for q in sealed.parts[p:]}
                del sealed.parts[p:]
                break
            offset += part.count
        return offset

    def _write_chapter(self, sealed: Sealed, prefix: str) -> None:
        """Move the head's oldest MAX_HEAD_PARTS parts into a new chapter (written first)."""
        moved, sealed.parts = sealed.parts[:MAX_HEAD_PARTS], sealed.parts[MAX_HEAD_PARTS:]
        body = encode({"parts": [_name(p.key) for p in moved], "counts": [p.count for p in moved]})
        key = self._unique(prefix, f"chapter-{len(sealed.chapters) + 1:06d}")
        self.store.put(key, body, content_type="application/json")  # type: ignore[arg-type]
        sealed.unconfirmed.add(key)
        self._cache_put(key, body)
        sealed.chapters.append(Chapter(key, sum(p.count for p in moved), moved))
        sealed.sweep = True

    @staticmethod
    def _unique(prefix: str, name: str) -> str:
        # Unique names: a part is never overwritten, so a head always reads what it named.
        return f"{prefix}{name}-{uuid.uuid4().hex[:8]}.json"

    @staticmethod
    def _head(body: dict[str, Any], sealed: Sealed, tail: list[dict[str, Any]]) -> bytes:
        head = {k: v for k, v in body.items() if k not in LAYOUT_FIELDS}
        head["messages"] = tail
        if sealed.parts or sealed.chapters:
            head[PARTS_FIELD] = [_name(p.key) for p in sealed.parts]
            head[COUNTS_FIELD] = [p.count for p in sealed.parts]
            head[CHAPTERS_FIELD] = [[_name(c.key), c.count] for c in sealed.chapters]
        return encode(head)


def _name(key: str) -> str:
    """A part's name under its conversation's prefix (what this layout stores)."""
    return key.rsplit("/", 1)[1]


def _inside(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and "/" not in key[len(prefix):] and len(key) > len(prefix)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _chunks(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """`messages` in runs of at most PART_BYTES (one message larger gets a part of its own)."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for message in messages:
        length = len(encode(message)) + 1
        if chunks[-1] and size + length > PART_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(message)
        size += length
    return chunks


class RecentHistory(list[dict[str, Any]]):
    """A turn's history whose first `loaded_from` messages were not read (they are `UNLOADED`):
    the working context starts after them. `whole()` reads them when it turns out to need them
    (no compaction recorded, or the session's context starts earlier)."""

    def __init__(self, messages: list[dict[str, Any]], load_rest: Callable[[list[dict[str, Any]]], None]) -> None:
        super().__init__(messages)
        self.loaded_from = next((i for i, m in enumerate(messages) if m is not UNLOADED), len(messages))
        self._load_rest = load_rest

    def whole(self) -> RecentHistory:
        """This history with every message read (one more round trip when some were not)."""
        if self.loaded_from:
            self._load_rest(self)
            self.loaded_from = 0
        return self
