"""Incremental workspace snapshots, the sandbox's side: what changed since the stored snapshot,
and a restore from one (the format is `snapshot_format`).

The sandbox remembers, for the last few snapshots it made or applied (by their root's MD5), each
entry's lstat (type, mode, size, mtime, inode, ctime) and manifest entry. A save walks the
workspace (a stat per entry, no file read), and reads, hashes and packs only the files whose
lstat moved; the rest keep their place in the packs already stored. Every folder is watched with
inotify from the walk on, so while no event comes the walk's lstats still hold: an unchanged
workspace costs no walk at all, and a changed one the walk plus what changed.

Like the archive (`archive`), every step goes through directory fds opened with O_NOFOLLOW from
the sandbox's own root fd, so a link the agent plants or a folder it swaps mid-walk is never
followed; an entry that changes under the walk is left for the next save (its lstat is not
remembered, so the next walk reads it again).
"""
from __future__ import annotations

import base64
import bisect
import ctypes
import errno
import hashlib
import io
import itertools
import os
import stat
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chalicelib.sandbox.archive import (
    RAW_FACTOR,
    _check_fits,
    _clear,
    _copy_sparse,
    _Folders,
    _too_large,
    allocated_bytes,
    clean_relative,
    excluded,
    restore_failure,
)
from chalicelib.sandbox.base import SandboxPathError
from chalicelib.sandbox.paths import iter_tree
from chalicelib.sandbox.snapshot_format import (
    EMPTY,
    REFRESH_SECONDS,
    ZLIB_LEVEL,
    Entry,
    PackWriter,
    Root,
    SnapshotDamaged,
    SnapshotDelta,
    check_pack,
    decode_root,
    encode_root,
    entry_line,
    file_content,
    index_segments,
    new_lineage,
    path_fields,
    read_entries,
    seal,
)

if TYPE_CHECKING:
    from chalicelib.sandbox.paths import DirTree

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Folders deeper than this are walked by `paths.iter_tree` (one fd whatever the depth) instead.
_FAST_DEPTH = 64
_READ = 1 << 20
#: Snapshots a sandbox remembers (the stored one, and saves that may have lost a race to it).
_REMEMBERED = 4

#: (mode, size, mtime, inode, ctime): ctime because a rewrite can set mtime back, never ctime.
Stat = tuple[int, int, int, int, int]


def _key(info: os.stat_result) -> Stat:
    return (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)


class _TooDeep(Exception):
    pass


def walk(root_fd: int, watch: Callable[[int], bool] | None = None) -> tuple[dict[str, Stat], bool]:
    """Every entry below the workspace but the skills: its lstat key, by relative path; and
    whether `watch(dir_fd)` (called on every folder before it is listed) held for all of them."""
    try:
        return _walk_fast(root_fd, watch)
    except _TooDeep:
        return {f.rel: _key(f.info) for f in iter_tree(root_fd, skip=excluded)}, False


def _walk_fast(root_fd: int, watch: Callable[[int], bool] | None) -> tuple[dict[str, Stat], bool]:
    """scandir from fds, one fd per level (a deep tree goes to `iter_tree`, which holds one)."""
    out: dict[str, Stat] = {}
    watched = watch is not None
    frames: list[tuple[int, str, list[str]]] = []
    fd, prefix = os.open(".", _DIR_FLAGS, dir_fd=root_fd), ""
    try:
        while True:
            # Watched before it is listed: a change after the listing is always an event.
            watched = watched and watch is not None and watch(fd)
            frames.append((fd, prefix, _scan(fd, prefix, out)))
            fd = -1
            if len(frames) > _FAST_DEPTH:
                raise _TooDeep
            while True:  # the next folder to enter
                while frames and not frames[-1][2]:
                    os.close(frames.pop()[0])
                if not frames:
                    return out, watched
                parent, parent_prefix, pending = frames[-1]
                name = pending.pop()
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        raise
                    out.pop(parent_prefix + name, None)  # replaced by a link or removed: not remembered
                    continue
                prefix = parent_prefix + name + "/"
                break
    finally:
        if fd >= 0:
            os.close(fd)
        for frame in frames:
            os.close(frame[0])


def _scan(fd: int, prefix: str, out: dict[str, Stat]) -> list[str]:
    """Record one folder's entries; return its subfolders' names."""
    subdirs: list[str] = []
    with os.scandir(fd) as scan:
        for found in scan:
            rel = prefix + found.name
            if prefix == ".claude/" and excluded(rel):
                continue
            try:
                info = found.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out[rel] = _key(info)
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(found.name)
    return subdirs


@dataclass(frozen=True)
class SnapshotState:
    """A snapshot as the sandbox knows it: its root, and each entry's lstat key and manifest line."""

    root: Root
    root_md5: str
    entries: dict[str, Entry]
    lines: dict[str, str]
    stats: dict[str, Stat]
    #: segment lines -> (key, size): a segment whose lines are unchanged is not written again
    segments: dict[tuple[str, ...], tuple[str, int]]


class _Parents:
    """The fd of the folder of the last entry read (entries come sorted, so it is mostly reused).
    Folders are entered one component at a time with O_NOFOLLOW from the root fd."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd, self.rel, self.fd = root_fd, "", os.open(".", _DIR_FLAGS, dir_fd=root_fd)

    def of(self, rel: str) -> tuple[int, str] | None:
        folder, _, name = rel.rpartition("/")
        if folder != self.rel:
            # Below the current folder (a deep tree, in sorted order): go on from it.
            below = self.rel == "" or folder.startswith(self.rel + "/")
            fd = os.open(".", _DIR_FLAGS, dir_fd=self.fd if below else self.root_fd)
            rest = folder[len(self.rel):].lstrip("/") if below else folder
            try:
                for part in rest.split("/") if rest else []:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = child
            except OSError:
                os.close(fd)
                return None  # moved, removed or replaced by a link since the walk: next save
            os.close(self.fd)
            self.fd, self.rel = fd, folder
        return self.fd, name

    def close(self) -> None:
        os.close(self.fd)


def _entry_of(parents: _Parents, rel: str, st: Stat, writer: PackWriter,
              known: dict[str, tuple[str, int, int]], budget: list[int]) -> tuple[Entry, Stat] | None:
    """The manifest entry of one changed entry (its content packed), with the lstat key it was
    read at; None when it vanished or changed type since the walk."""
    where = parents.of(rel)
    if where is None:
        return None
    parent, name = where
    mode = st[0]
    if stat.S_ISDIR(mode):
        return Entry(**path_fields(rel), kind="dir", mode=mode & 0o777), st
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=parent)
        except OSError:
            return None
        return Entry(**path_fields(rel), kind="symlink", mode=0o777, mtime_ns=st[2],
                     target=base64.b64encode(os.fsencode(target)).decode()), st
    if not stat.S_ISREG(mode):
        return None  # fifos, sockets and devices are not workspace content
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            return None
        budget[0] -= now.st_size
        if budget[0] < 0:
            raise _TooLargeRaw
        pack, offset = writer.start()
        buffer = writer.packs[pack]
        digest = hashlib.sha256()
        squeeze = zlib.compressobj(ZLIB_LEVEL)
        left = now.st_size
        while left:
            chunk = os.read(fd, min(_READ, left))
            if not chunk:  # shrank while read: the size recorded is kept, the rest zeros
                chunk = bytes(min(_READ, left))
            digest.update(chunk)
            buffer += squeeze.compress(chunk)
            left -= len(chunk)
        if now.st_size:
            buffer += squeeze.flush()
        hexdigest = digest.hexdigest()[:32]
        length = len(buffer) - offset
        if hexdigest in known:  # the same bytes are stored already (a touch, a copy, a rename)
            del buffer[offset:]
            pack, offset, length = known[hexdigest]
        elif not now.st_size:
            pack, offset, length = "", 0, 0
        taken = allocated_bytes(now.st_size, now.st_blocks * 512)
        entry = Entry(**path_fields(rel), kind="file", mode=now.st_mode & 0o777, mtime_ns=now.st_mtime_ns,
                      size=now.st_size, allocated=taken if taken < allocated_bytes(now.st_size) else None,
                      digest=hexdigest, pack=pack or None, offset=offset, length=length)
        return entry, _key(now)
    finally:
        os.close(fd)


class _TooLargeRaw(Exception):
    pass


def make_delta(root_fd: int, base: SnapshotState | None, max_bytes: int,
               current: dict[str, Stat] | None = None) -> tuple[SnapshotDelta, SnapshotState] | None:
    """What a save writes against `base` (None: from nothing), and the state it leaves; None
    when nothing changed since `base`. `current`: the workspace's lstats when just walked.
    SnapshotTooLarge past `max_bytes`."""
    if current is None:
        current = walk(root_fd)[0]
    if base is not None and current == base.stats:
        return None
    lineage = base.root.lineage if base is not None else new_lineage()
    entries: dict[str, Entry] = {}
    lines: dict[str, str] = {}
    stats: dict[str, Stat] = {}
    to_read: list[str] = []
    for rel, st in current.items():
        if base is not None and base.stats.get(rel) == st and rel in base.entries:
            entries[rel], lines[rel], stats[rel] = base.entries[rel], base.lines[rel], st
        else:
            to_read.append(rel)
    known: dict[str, tuple[str, int, int]] = {}
    now = time.time()
    stale = {k for k in base.root.objects() if now - base.root.written.get(k, 0) >= REFRESH_SECONDS} if base else set()
    if base is not None:
        # A pack mostly garbage (less than half of it still used) is not kept for the few files
        # it still holds: they are packed again, and the pack goes with the next root.
        live: dict[str, int] = {}
        for entry in entries.values():
            if entry.pack is not None:
                live[entry.pack] = live.get(entry.pack, 0) + entry.length
        # So is one written more than REFRESH_SECONDS ago: the bucket expires objects by age.
        sparse = {key for key, size in base.root.packs.items()
                  if live.get(key, 0) * 2 < size or key in stale}
        for rel in [r for r, e in entries.items() if e.pack in sparse]:
            del entries[rel], lines[rel], stats[rel]
            to_read.append(rel)
        known = {e.digest: (e.pack, e.offset, e.length) for e in entries.values()
                 if e.digest is not None and e.pack is not None and e.pack not in sparse}
    writer = PackWriter(lineage)
    budget = [max_bytes * RAW_FACTOR - sum(e.size for e in entries.values())]
    parents = _Parents(root_fd)
    fresh: dict[str, Entry] = {}
    try:
        for rel in sorted(to_read):
            made = _entry_of(parents, rel, current[rel], writer, known, budget)
            if made is None:
                continue
            entry, st = made
            entries[rel], stats[rel] = entry, st
            fresh[rel] = entry
            if entry.digest is not None and entry.pack is not None:
                known.setdefault(entry.digest, (entry.pack, entry.offset, entry.length))
    except _TooLargeRaw:
        raise _too_large(max_bytes, f"its files add up to more than {max_bytes * RAW_FACTOR // 2**20} MiB") from None
    finally:
        parents.close()
    writer.finish(fresh)
    for rel, entry in fresh.items():
        entries[rel], lines[rel] = entry, entry_line(entry)
    return _seal(lineage, base, entries, lines, stats, writer, max_bytes, stale)


def _seal(lineage: str, base: SnapshotState | None, entries: dict[str, Entry], lines: dict[str, str],
          stats: dict[str, Stat], writer: PackWriter, max_bytes: int, stale: set[str]) -> tuple[SnapshotDelta, SnapshotState]:
    """Cut the segments, write the root, and name what the new root no longer needs. A `stale`
    segment is encoded and written again (same bytes, same key, a new write time)."""
    sizes = {**(base.root.packs if base is not None else {}), **{k: len(v) for k, v in writer.packs.items()}}
    reuse = {run: found for run, found in base.segments.items() if found[0] not in stale} if base is not None else {}
    root, objects, segments = seal(lineage, entries, lines, reuse, sizes,
                                   base.root.written if base is not None else None)
    objects.update({key: bytes(writer.packs[key]) for key in root.packs if key in writer.packs})
    if root.stored > max_bytes:
        raise _too_large(max_bytes, f"the snapshot would take {root.stored} bytes")
    data = encode_root(root)
    obsolete = sorted(base.root.objects() - root.objects()) if base is not None else []
    content = sum(1 for rel in entries if rel != ".claude")
    delta = SnapshotDelta(data, objects, obsolete, base.root_md5 if base is not None else None, content)
    return delta, SnapshotState(root, hashlib.md5(data).hexdigest(), entries, lines, stats, segments)


def apply_snapshot(root_fd: int, root_data: bytes, objects: dict[str, bytes], max_bytes: int,
                   owner: tuple[int, int] | None, disk_limited: bool,
                   walker: Callable[[int], dict[str, Stat]] | None = None) -> tuple[int, SnapshotState]:
    """Make the workspace (skills untouched) hold exactly the snapshot's entries.

    Everything is checked before anything is removed: every object present and matching its
    address, every path inside the workspace, once, and below no link of the snapshot; a
    snapshot whose files cannot fit the workspace's disk is refused (SandboxError).
    """
    root = decode_root(root_data)
    entries = sorted(read_entries(root, objects), key=lambda e: e.rel)
    raw = size_total = 0
    seen: set[str] = set()
    links: list[str] = []
    for entry in entries:
        rel = entry.rel
        if clean_relative(rel) != rel or excluded(rel) or rel in seen:
            raise SnapshotDamaged(f"The snapshot's entry {rel!r} is outside the workspace, the skills' or repeated.")
        seen.add(rel)
        if entry.kind == "symlink":
            links.append(rel)
        if entry.kind == "file":
            if entry.size and (entry.pack is None or entry.pack not in root.packs):
                raise SnapshotDamaged(f"The pack holding {rel} is missing.")
            size_total += entry.size
            raw += allocated_bytes(entry.size, entry.allocated)
    if size_total > max_bytes * RAW_FACTOR or root.stored > max_bytes:
        raise _too_large(max_bytes, "its files add up to more than the cap allows")
    names = sorted(seen)
    for key in root.packs:
        check_pack(key, objects.get(key))
    for link in links:  # an entry below a link sorts right after "link/": one bisection per link
        at = bisect.bisect_left(names, link + "/")
        if at < len(names) and names[at].startswith(link + "/"):
            raise SandboxPathError(f"{names[at]!r} cannot be written: {link} is a symbolic link in the snapshot.")
    files = 0
    try:
        if owner is None:
            found = os.fstat(root_fd)
            if os.geteuid() == 0 and (found.st_uid, found.st_gid) != (0, 0):
                owner = (found.st_uid, found.st_gid)
        if disk_limited:
            _check_fits(root_fd, len(entries), raw)
        _clear(root_fd)
        folders = _Folders(root_fd, owner)
        try:
            for entry in entries:
                files += _restore_one(folders, entry, objects, owner)
        finally:
            folders.close()
    except OSError as exc:
        raise restore_failure(exc) from None
    by_rel = {e.rel: e for e in entries}
    lines, segments = index_segments(root, by_rel)
    stats = walker(root_fd) if walker is not None else walk(root_fd)[0]
    state = SnapshotState(root, hashlib.md5(root_data).hexdigest(), by_rel, lines,
                          {rel: st for rel, st in stats.items() if rel in by_rel}, segments)
    return files, state


def _restore_one(folders: _Folders, entry: Entry, objects: dict[str, bytes], owner: tuple[int, int] | None) -> int:
    parent, name = folders.parent_of(entry.rel)
    if entry.kind == "dir":
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        os.chmod(name, (entry.mode & 0o777) | 0o700, dir_fd=parent, follow_symlinks=False)
    elif entry.kind == "symlink":
        os.symlink(os.fsdecode(base64.b64decode(entry.target or "")), name, dir_fd=parent)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)
    else:
        data = file_content(entry, objects.get(entry.pack or "")) if entry.size else b""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            if data and entry.allocated is not None:
                _copy_sparse(io.BytesIO(data), fd, entry.size)  # its holes stay holes
            elif data:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, entry.mode & 0o777)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        return 1
    if owner is not None:
        os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
    return 0


#: inotify events that mean an entry changed (reads, opens and closes without a write do not).
_IN_EVENTS = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800  # MODIFY ATTRIB CLOSE_WRITE MOVED_* CREATE DELETE *_SELF
_IN_ONLYDIR = 0x01000000
#: A save walks anyway when its last walk is older than this: inotify does not see writes
#: through a shared mmap, which only the files' times show.
FULL_WALK_SECONDS = 60.0


_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class _Inotify:
    """One inotify instance for the whole process (the kernel allows 128 per user by default,
    and a host runs more sandboxes than that), its watches tagged with the sandbox that made
    them. No event since a walk means no entry of that sandbox's workspace changed, so its
    unchanged check needs no walk. Each folder is watched through the fd the walk opened it with
    (`/proc/self/fd/N`, never a path the agent could swap)."""

    _shared: _Inotify | None = None
    _failed = False
    _create = threading.Lock()

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self._lock = threading.Lock()
        self._owner: dict[int, int] = {}  # watch descriptor -> the sandbox's token
        self._dirty: set[int] = set()

    @classmethod
    def shared(cls) -> _Inotify | None:
        """The process's instance; None where inotify cannot be had (every check walks then)."""
        with cls._create:
            if cls._shared is None and not cls._failed:
                try:
                    cls._shared = cls()
                except OSError:
                    cls._failed = True
            return cls._shared

    def watch(self, token: int, dir_fd: int) -> bool:
        """Watch the folder open at `dir_fd` for sandbox `token`; False when the kernel refuses
        (`fs.inotify.max_user_watches`)."""
        wd = self._libc.inotify_add_watch(self.fd, f"/proc/self/fd/{dir_fd}".encode(), _IN_EVENTS | _IN_ONLYDIR)
        if wd < 0:
            return False
        with self._lock:
            self._owner[wd] = token
        return True

    def fired(self, token: int) -> bool:
        """Whether any event came for sandbox `token` since the last call."""
        with self._lock:
            self._drain()
            seen = token in self._dirty
            self._dirty.discard(token)
            return seen

    def forget(self, token: int) -> None:
        """Drop the sandbox's watches (it is being destroyed)."""
        with self._lock:
            self._drain()
            for wd in [wd for wd, owner in self._owner.items() if owner == token]:
                self._libc.inotify_rm_watch(self.fd, wd)
                del self._owner[wd]
            self._dirty.discard(token)

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            at = 0
            while at + _EVENT.size <= len(data):
                wd, mask, _, size = _EVENT.unpack_from(data, at)
                at += _EVENT.size + size
                if mask & _IN_Q_OVERFLOW:  # events were lost: every sandbox walks again
                    self._dirty.update(self._owner.values())
                    continue
                owner = self._owner.pop(wd, None) if mask & _IN_IGNORED else self._owner.get(wd)
                if owner is not None:
                    self._dirty.add(owner)


_tokens = itertools.count(1)


class IncrementalSnapshotMixin:
    """Incremental snapshots of a workspace on this machine's disk, for LocalSandbox.

    Needs `self.files` (the DirTree on the workspace: its root fd, and `owner`), `self.disk_limited`
    and `self._alive()`, like `archive.WorkspaceArchiveMixin`. The workspace's folders are watched
    with inotify from each walk on: while no event comes (and the last walk is recent), the
    lstats that walk found still hold, and an unchanged check costs no walk at all.
    """

    files: DirTree
    disk_limited: bool
    _alive: Callable[[], None]
    # Per instance once set; the class values are the defaults before the first walk.
    _watch_token: int = 0
    _watch_closed: bool = False
    _armed: tuple[dict[str, Stat], float] | None = None

    def _snapshot_memory(self) -> tuple[threading.Lock, OrderedDict[str, SnapshotState]]:
        found: tuple[threading.Lock, OrderedDict[str, SnapshotState]] | None = getattr(self, "_snapshots_known", None)
        if found is None:
            found = (threading.Lock(), OrderedDict())
            self._snapshots_known = found
        return found

    def _current(self) -> dict[str, Stat]:
        """The workspace's lstats: those of the last watched walk while no event came since (and
        it is recent), else a new walk, which watches every folder it lists."""
        inotify = _Inotify.shared() if not self._watch_closed else None
        if inotify is not None and not self._watch_token:
            self._watch_token = next(_tokens)
        token = self._watch_token
        armed = self._armed
        if inotify is not None and not inotify.fired(token) and armed is not None \
                and time.monotonic() - armed[1] < FULL_WALK_SECONDS:
            return armed[0]
        started = time.monotonic()
        current, watched = walk(self.files.root_fd, (lambda fd: inotify.watch(token, fd)) if inotify is not None else None)
        # A walk that could not watch every folder (too deep, too many watches) arms nothing.
        self._armed = (current, started) if watched else None
        return current

    def close_snapshot_watch(self) -> None:
        """Stop watching the workspace (the sandbox is being destroyed)."""
        lock, _ = self._snapshot_memory()
        with lock:
            self._watch_closed, self._armed = True, None
            inotify = _Inotify.shared() if self._watch_token else None
            if inotify is not None:
                inotify.forget(self._watch_token)

    def snapshot_unchanged(self) -> list[str]:
        """The root MD5s of the snapshots this sandbox made or applied that the workspace still
        matches exactly (no event since its last walk, or a walk; nothing read): a save whose
        stored root is one of them writes nothing. `EMPTY` among them: the workspace holds
        nothing but `.claude`, as it did when this sandbox last looked."""
        self._alive()
        lock, known = self._snapshot_memory()
        with lock:
            if not known:
                return []
            current = self._current()
            matching = [state for state in known.values() if state.stats == current]
            # An empty workspace (nothing but .claude) is "empty" too: with no snapshot stored,
            # a save has nothing to write and need not ask the sandbox for a delta again.
            empty = [EMPTY] if any(all(rel == ".claude" for rel in state.entries) for state in matching) else []
            return [state.root_md5 for state in matching] + empty

    def snapshot_delta(self, max_bytes: int, base: str | None) -> SnapshotDelta | None:
        """The objects and root a save writes when the stored root's MD5 is `base` (None: no
        snapshot stored); None when the workspace still matches that root.

        A root this sandbox did not make or apply gives a delta from nothing (every file packed
        again, `base` None in it). SnapshotTooLarge past `max_bytes`."""
        self._alive()
        lock, known = self._snapshot_memory()
        with lock:
            state = known.get(base) if base is not None else None
            made = make_delta(self.files.root_fd, state, max_bytes, self._current())
            if made is None:
                return None
            delta, after = made
            self._remember(known, after)
            return delta

    def import_snapshot(self, root: bytes, objects: dict[str, bytes], max_bytes: int) -> int:
        """Replace the workspace (skills untouched) by the snapshot's entries; return the file count.

        SnapshotDamaged when an object is missing or wrong; SandboxError when it cannot fit the disk."""
        self._alive()
        lock, known = self._snapshot_memory()
        with lock:
            self._armed = None
            files, state = apply_snapshot(self.files.root_fd, root, objects, max_bytes,
                                          self.files.owner, self.disk_limited, walker=lambda fd: self._current())
            known.clear()
            self._remember(known, state)
            return files

    @staticmethod
    def _remember(known: OrderedDict[str, SnapshotState], state: SnapshotState) -> None:
        known[state.root_md5] = state
        known.move_to_end(state.root_md5)
        while len(known) > _REMEMBERED:
            known.popitem(last=False)
