"""The incremental workspace snapshot format: a root manifest, manifest segments and packs.

A snapshot is three kinds of object, all below the owner's folder of the session:

    {lineage}/p-{sha256}     a pack: the contents of some files, each a zlib stream, end to end
    {lineage}/s-{sha256}     a segment: a run of the manifest's entries (path-sorted), gzip JSON
    root                     the manifest's root: its segments, the packs they use and their sizes

A save writes only what changed: the files whose (type, mode, size, mtime, inode) moved go into
one new pack, the segments holding their entries are written again (a segment is cut after an
entry whose path hashes to a boundary, so an added file shifts no other segment), then the root,
last: a reader either sees the whole old snapshot or the whole new one. What the new root no
longer references is deleted right after it is written. `lineage` is drawn once per series of
snapshots a sandbox makes from nothing, so a snapshot set aside (unrestorable) never shares an
object with the one that replaced it, and deleting the one's garbage cannot touch the other.

Everything here is pure (no I/O): the sandbox side (`incremental`) and the app side (the files API
on a snapshot) build and read the same objects with it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from chalicelib.sandbox.base import SandboxError, WorkspaceEntry

#: A pack is closed once it holds this many bytes of file content (a bigger file has one of its own).
PACK_BYTES = 8 * 2**20
#: Entries per segment at most; on average a segment ends after 1 entry in 256 (the path's hash).
SEGMENT_MAX = 1024
ZLIB_LEVEL = 1
#: In a sandbox's `snapshot_unchanged` answer: the workspace is empty and was already found so.
EMPTY = "empty"
#: A save writes again the objects its root still uses that are older than this (see `Root.written`).
REFRESH_SECONDS = 24 * 3600


class SnapshotDamaged(SandboxError):
    """A snapshot's objects are missing or do not match their manifest: it cannot be restored."""


EntryKind = Literal["file", "dir", "symlink"]


class Entry(BaseModel):
    """One entry of the manifest. `path` is the relative path when it is UTF-8, else None and
    `raw` carries its bytes (base64). A file's content is `length` bytes at `offset` of `pack`
    (a zlib stream of `size` bytes whose SHA-256 starts with `digest`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    raw: str | None = None
    kind: EntryKind
    mode: int = Field(ge=0, le=0o7777)
    mtime_ns: int = 0
    size: int = Field(default=0, ge=0)
    #: Bytes a sparse file takes on disk, when fewer than its pages (restores keep the holes).
    allocated: int | None = Field(default=None, ge=0)
    digest: str | None = None
    pack: str | None = None
    offset: int = Field(default=0, ge=0)
    length: int = Field(default=0, ge=0)
    #: A link's target, base64 of its bytes (never read through).
    target: str | None = None

    @property
    def rel(self) -> str:
        """The path as the walk names it (surrogate escapes for bytes that are not UTF-8)."""
        if self.path is not None:
            return self.path
        return os.fsdecode(base64.b64decode(self.raw or ""))


class Root(BaseModel):
    """The manifest's root, written last. `packs` and `segments` map each key to its size."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    lineage: str = Field(pattern=r"^[0-9a-f]{16}$")
    segments: list[str]
    segment_sizes: list[int]
    packs: dict[str, int]
    files: int = Field(ge=0)
    #: When each object was written (Unix seconds): those older than REFRESH_SECONDS are written
    #: again by the next save, so the bucket's expiry of `sessions/` (by object age) never takes
    #: an object out from under a root that still uses it.
    written: dict[str, int] = Field(default_factory=dict)

    @property
    def stored(self) -> int:
        """Bytes the snapshot's objects take in the bucket, the root left out."""
        return sum(self.segment_sizes) + sum(self.packs.values())

    def objects(self) -> set[str]:
        """Every object key (relative to the owner's folder) the root references."""
        return set(self.segments) | set(self.packs)


_ENTRIES = TypeAdapter(list[Entry])


def path_fields(rel: str) -> dict[str, str | None]:
    """`path`/`raw` for a relative path carried with surrogate escapes."""
    raw = os.fsencode(rel)
    try:
        return {"path": raw.decode("utf-8"), "raw": None}
    except UnicodeDecodeError:
        return {"path": None, "raw": base64.b64encode(raw).decode()}


def entry_line(entry: Entry) -> str:
    """The entry's JSON as stored in a segment (deterministic)."""
    return json.dumps(entry.model_dump(exclude_defaults=True), sort_keys=True, separators=(",", ":"))


def boundary_after(rel: str) -> bool:
    """Whether a segment ends after this path: depends on the path alone, so inserting or
    removing an entry changes only the segment it falls in."""
    return hashlib.blake2b(os.fsencode(rel), digest_size=1).digest()[0] == 0


@dataclass(frozen=True)
class Segment:
    """A run of entry lines and the object that stores it."""

    lines: tuple[str, ...]
    key: str
    data: bytes = field(repr=False)


def encode_segment(lineage: str, lines: tuple[str, ...]) -> Segment:
    """The segment object for these lines: gzip JSON (no time in the header), content-addressed."""
    data = gzip.compress(("[" + ",".join(lines) + "]").encode(), compresslevel=6, mtime=0)
    return Segment(lines, f"{lineage}/s-{hashlib.sha256(data).hexdigest()[:32]}", data)


def split_lines(paths_and_lines: list[tuple[str, str]]) -> list[tuple[str, ...]]:
    """Path-sorted (path, line) pairs cut into segments at content-defined boundaries."""
    out: list[tuple[str, ...]] = []
    current: list[str] = []
    for rel, line in paths_and_lines:
        current.append(line)
        if boundary_after(rel) or len(current) >= SEGMENT_MAX:
            out.append(tuple(current))
            current = []
    if current:
        out.append(tuple(current))
    return out


def decode_segment(key: str, data: bytes) -> list[Entry]:
    """The entries of a segment object, checked against its content address."""
    if not key.rsplit("/", 1)[-1].startswith("s-") or hashlib.sha256(data).hexdigest()[:32] != key.rsplit("-", 1)[-1]:
        raise SnapshotDamaged(f"The snapshot's segment {key} does not match its content address.")
    try:
        return _ENTRIES.validate_json(gzip.decompress(data))
    except (OSError, EOFError, zlib.error, ValidationError) as exc:
        raise SnapshotDamaged(f"The snapshot's segment {key} cannot be read ({type(exc).__name__}).") from None


def decode_root(data: bytes) -> Root:
    """A root manifest, or SnapshotDamaged."""
    try:
        return Root.model_validate_json(data)
    except ValidationError as exc:
        raise SnapshotDamaged(f"The snapshot's manifest cannot be read ({exc.error_count()} errors).") from None


def encode_root(root: Root) -> bytes:
    """The root's bytes (deterministic: the same snapshot gives the same bytes and ETag)."""
    return json.dumps(root.model_dump(), sort_keys=True, separators=(",", ":")).encode()


def read_entries(root: Root, objects: dict[str, bytes]) -> list[Entry]:
    """Every entry of a snapshot, from its segments (SnapshotDamaged when one is missing)."""
    entries: list[Entry] = []
    for key in root.segments:
        data = objects.get(key)
        if data is None:
            raise SnapshotDamaged(f"The snapshot's segment {key} is missing.")
        entries.extend(decode_segment(key, data))
    return entries


def file_content(entry: Entry, pack: bytes | None) -> bytes:
    """A file's bytes from its pack, checked against its digest."""
    if pack is None:
        raise SnapshotDamaged(f"The pack {entry.pack} holding {entry.rel} is missing.")
    blob = pack[entry.offset:entry.offset + entry.length]
    try:
        data = zlib.decompress(blob) if entry.size else b""
    except zlib.error:
        raise SnapshotDamaged(f"{entry.rel} cannot be read from its pack {entry.pack}.") from None
    if len(data) != entry.size or hashlib.sha256(data).hexdigest()[:32] != entry.digest:
        raise SnapshotDamaged(f"{entry.rel} does not match its digest in pack {entry.pack}.")
    return data


def listing(entries: list[Entry]) -> list[WorkspaceEntry]:
    """The entries as the files API shows them; a folder's time is the newest of what it holds."""
    shown = [WorkspaceEntry(e.rel, e.kind, e.size if e.kind == "file" else 0, e.mtime_ns / 1e9) for e in entries]
    newest: dict[str, float] = {}
    for entry in sorted(shown, key=lambda e: e.path.count("/"), reverse=True):
        folder = entry.path.rpartition("/")[0]
        if folder:
            newest[folder] = max(newest.get(folder, 0.0), newest.get(entry.path, entry.modified))
    return [WorkspaceEntry(e.path, e.kind, e.size, newest.get(e.path, e.modified)) if e.kind == "dir" else e
            for e in shown]


def new_lineage() -> str:
    """A fresh lineage id (see the module docstring)."""
    return os.urandom(8).hex()


def new_pack_key(lineage: str) -> str:
    """A provisional key for a pack being filled (`PackWriter.finish` gives it its content address)."""
    return f"{lineage}/new-{os.urandom(12).hex()}"


def pack_key(lineage: str, data: bytes) -> str:
    """A pack's content address: a restore checks every pack against it before touching the workspace."""
    return f"{lineage}/p-{hashlib.sha256(data).hexdigest()[:32]}"


def check_pack(key: str, data: bytes | None) -> None:
    """SnapshotDamaged unless the pack is present and matches its content address."""
    if data is None:
        raise SnapshotDamaged(f"The snapshot's pack {key} is missing.")
    if hashlib.sha256(data).hexdigest()[:32] != key.rsplit("-", 1)[-1]:
        raise SnapshotDamaged(f"The snapshot's pack {key} does not match its content address.")


@dataclass
class PackWriter:
    """Builds packs: each file's content is one zlib stream appended to the current pack."""

    lineage: str
    packs: dict[str, bytearray] = field(default_factory=dict)
    current: str | None = None

    def start(self) -> tuple[str, int]:
        """Where the next file begins (a new pack once the current one is full)."""
        if self.current is None or len(self.packs[self.current]) >= PACK_BYTES:
            self.current = new_pack_key(self.lineage)
            self.packs[self.current] = bytearray()
        return self.current, len(self.packs[self.current])

    def finish(self, entries: dict[str, Entry]) -> None:
        """Give each filled pack its content address, in `self.packs` and in the entries using it."""
        renamed = {key: pack_key(self.lineage, bytes(data)) for key, data in self.packs.items() if data}
        self.packs = {renamed[key]: data for key, data in self.packs.items() if key in renamed}
        self.current = None
        for rel, entry in entries.items():
            if entry.pack in renamed:
                entries[rel] = entry.model_copy(update={"pack": renamed[entry.pack]})

    def add(self, data: bytes) -> tuple[str, int, int, str]:
        """Append one file's bytes; return (pack, offset, length, digest)."""
        key, offset = self.start()
        blob = zlib.compress(data, ZLIB_LEVEL) if data else b""
        self.packs[key] += blob
        return key, offset, len(blob), hashlib.sha256(data).hexdigest()[:32]


# -- the snapshot a sandbox hands over: its root and the new objects, framed in one body ------


@dataclass(frozen=True)
class SnapshotDelta:
    """What a save must write: new objects (keys relative to the owner's folder), then the root.

    `base`: the MD5 of the stored root this delta was made against (its objects that `obsolete`
    does not name are reused), or None when it was made from nothing (every object is new).
    `files`: its entries but `.claude` (0: an empty workspace, nothing worth keeping).
    """

    root: bytes
    objects: dict[str, bytes]
    obsolete: list[str]
    base: str | None
    files: int

    @property
    def root_md5(self) -> str:
        return hashlib.md5(self.root).hexdigest()


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str | None
    files: int
    obsolete: list[str]
    sizes: list[tuple[str, int]]


def encode_frames(root: bytes, objects: dict[str, bytes], *, base: str | None = None,
                  obsolete: list[str] | None = None, files: int = 0) -> bytes:
    """One body carrying a root and its objects (the sandbox host's snapshot routes)."""
    header = _Header(base=base, files=files, obsolete=obsolete or [],
                     sizes=[("", len(root))] + [(k, len(v)) for k, v in objects.items()])
    return header.model_dump_json().encode() + b"\n" + root + b"".join(objects.values())


def decode_frames(body: bytes) -> SnapshotDelta:
    """The inverse of `encode_frames`; SandboxError for a body that does not add up."""
    head, sep, rest = body.partition(b"\n")
    try:
        header = _Header.model_validate_json(head)
    except ValidationError:
        raise SandboxError("The snapshot body's header cannot be read.") from None
    if not sep or not header.sizes or header.sizes[0][0] != "" or sum(n for _, n in header.sizes) != len(rest):
        raise SandboxError("The snapshot body does not match its header.")
    view = memoryview(rest)
    root_size = header.sizes[0][1]
    objects: dict[str, bytes] = {}
    at = root_size
    for key, size in header.sizes[1:]:
        objects[key] = bytes(view[at:at + size])
        at += size
    return SnapshotDelta(bytes(view[:root_size]), objects, header.obsolete, header.base, header.files)


# -- cutting a manifest into segments and a root ------------------------------------------------

SegmentIndex = dict[tuple[str, ...], tuple[str, int]]


def seal(lineage: str, entries: dict[str, Entry], lines: dict[str, str], reuse: SegmentIndex,
         pack_sizes: dict[str, int], written: dict[str, int] | None = None) -> tuple[Root, dict[str, bytes], SegmentIndex]:
    """The root of these entries, the segments not already stored (`reuse`: lines -> key and size
    of stored segments) and the index of the new root's segments. `pack_sizes`: every pack's size;
    `written`: when each stored object was written (the previous root's; the rest is written now)."""
    new: dict[str, bytes] = {}
    index: SegmentIndex = {}
    keys: list[str] = []
    sizes: list[int] = []
    for run in split_lines([(rel, lines[rel]) for rel in sorted(entries)]):
        found = reuse.get(run) or index.get(run)
        if found is None:
            segment = encode_segment(lineage, run)
            new[segment.key] = segment.data
            found = (segment.key, len(segment.data))
        index[run] = found
        keys.append(found[0])
        sizes.append(found[1])
    packs = {e.pack: pack_sizes[e.pack] for e in entries.values() if e.pack is not None}
    now, before = int(time.time()), written or {}
    root = Root(lineage=lineage, segments=keys, segment_sizes=sizes, packs=packs,
                files=sum(1 for e in entries.values() if e.kind == "file"),
                written={k: now if k in new else before.get(k, now) for k in [*keys, *packs]})
    return root, new, index


def index_segments(root: Root, entries: dict[str, Entry]) -> tuple[dict[str, str], SegmentIndex]:
    """Each entry's line, and which stored segment holds each run of lines (empty when the
    stored segments were cut differently: nothing is reused then, nothing is wrong)."""
    lines = {rel: entry_line(e) for rel, e in entries.items()}
    runs = split_lines([(rel, lines[rel]) for rel in sorted(entries)])
    if len(runs) != len(root.segments):
        return lines, {}
    return lines, {run: (key, size) for run, key, size in zip(runs, root.segments, root.segment_sizes, strict=True)}
