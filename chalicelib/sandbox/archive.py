"""Workspace archives: one compressed tar of /workspace (without the skills), made and applied
without ever following a link the agent planted.

The host side touches the workspace while the agent may be running, so every step goes through
directory file descriptors: the walk starts from the sandbox's own root fd (`DirTree.root_fd`,
the workspace folder it was made with, never a path looked up again), each folder is opened
with O_NOFOLLOW relative to its parent, each file is opened with O_NOFOLLOW relative to its
folder and checked to be a regular file. A symlink is archived as a symlink (its target is
never read), and an archive can only ever create entries below the folder it is applied to.
Restored entries are given to the session's uid through their fds, and a restore that cannot
fit the workspace's disk (its own tmpfs of SANDBOX_DISK_MB) is refused before anything is removed.

Archives are deterministic (sorted entries, fixed owners, gzip header without a time, folders
without times), so the same files give the same bytes and an unchanged workspace costs no write.
"""

from __future__ import annotations

import bisect
import errno
import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from chalicelib.sandbox.base import (
    WORKSPACE,
    SandboxError,
    SandboxFileNotFound,
    SandboxPathError,
    SnapshotTooLarge,
    WorkspaceEntry,
)
from chalicelib.sandbox.paths import iter_tree, remove_tree

if TYPE_CHECKING:
    from chalicelib.sandbox.paths import DirTree

# The skills have their own home (the user's storage prefix) and are loaded by setup.
EXCLUDED = (".claude/skills",)
COMPRESS_LEVEL = 6
# An archive is refused when its files add up to this many times its compressed cap: a
# sparse or highly compressible file must not keep the host busy for minutes.
RAW_FACTOR = 4
_CHUNK = 1 << 20
#: The page a tmpfs workspace spends per started 4 KiB of a file.
_PAGE = 4096
#: A sparse file's allocated bytes, recorded at save so a restore can tell whether it fits.
ALLOCATED_KEY = "CLAUDEAGENT.allocated"


def allocated_bytes(size: int, blocks_bytes: int | None = None) -> int:
    """What a file costs the workspace's disk: its pages, or its allocated blocks when fewer (sparse).

    The one way sizes are counted at save, at restore and against SANDBOX_DISK_MB: a sparse
    file's length says nothing of what it takes, and restores write its holes back as holes.
    """
    pages = -(-size // _PAGE) * _PAGE
    return pages if blocks_bytes is None else min(pages, blocks_bytes)

EntryKind = Literal["file", "dir", "symlink"]


def excluded(rel: str) -> bool:
    """Whether a relative path belongs to what archives leave out (the skills)."""
    return any(rel == e or rel.startswith(e + "/") for e in EXCLUDED)


def clean_relative(path: str) -> str:
    """`path` (absolute under /workspace, or relative to it) as a normalised relative path.

    Refuses `..` that leaves the workspace, other absolute paths, NUL bytes and the workspace itself.
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SandboxPathError(f"Invalid path {path!r}: give a file path under {WORKSPACE}.")
    absolute = path if path.startswith("/") else f"{WORKSPACE}/{path}"
    normal = posixpath.normpath(absolute)
    if not normal.startswith(WORKSPACE + "/"):
        raise SandboxPathError(f"Path {path!r} is outside {WORKSPACE}: only files under {WORKSPACE} can be used.")
    return normal[len(WORKSPACE) + 1:]


# -- walking a folder through file descriptors ---------------------------------------------


def _open_dir(name: str, dir_fd: int | None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


#: A workspace to archive: a host folder, or a directory fd held on it (the sandbox's DirTree root).
Root = Path | int


def _open_root(root: Root) -> int:
    """A new fd on the folder, closed by the caller. From an fd, a fresh open of "." below it
    (not a dup): a dup shares the directory's read offset with the sandbox's own walks."""
    if isinstance(root, int):
        return _open_dir(".", root)
    return _open_dir(str(root), None)


def _walk(dir_fd: int) -> Iterator[tuple[str, os.stat_result, int, str]]:
    """Yield (relative path, lstat, parent fd, name) for every entry but the skills, depth first,
    sorted by bytes (`paths.iter_tree`: iterative, one fd at a time)."""
    for found in iter_tree(dir_fd, sort=True, skip=excluded):
        yield found.rel, found.info, found.parent_fd, found.name


def manifest(workspace: Root) -> list[WorkspaceEntry]:
    """Every entry of the workspace (skills left out), without reading any file."""
    root = _open_root(workspace)
    try:
        entries = []
        for rel, info, _, _ in _walk(root):
            kind: EntryKind | None = ("dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode)
                                      else "symlink" if stat.S_ISLNK(info.st_mode) else None)
            if kind is not None:
                entries.append(WorkspaceEntry(rel, kind, info.st_size if kind == "file" else 0, info.st_mtime))
        return entries
    finally:
        os.close(root)


class _Exactly(io.RawIOBase):
    """Reads exactly `size` bytes of a file that may shrink meanwhile (padding with zeros)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.left = fd, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        n = self.left if n < 0 else min(n, self.left)
        data = os.read(self.fd, n) if n else b""
        data += b"\0" * (n - len(data))
        self.left -= n
        return data


def signature(workspace: Root) -> str:
    """A digest of every entry's path, type, mode, size and modification time: equal signatures
    mean the workspace did not change, found by a walk (no file is read, nothing compressed)."""
    digest = hashlib.sha256()
    root = _open_root(workspace)
    try:
        for rel, info, _, _ in _walk(root):
            digest.update(os.fsencode(rel) + f"\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}\n".encode())
    finally:
        os.close(root)
    return digest.hexdigest()


def pack(workspace: Root, max_bytes: int) -> bytes:
    """The workspace (skills left out) as a .tar.gz; SnapshotTooLarge past `max_bytes`."""
    out = io.BytesIO()
    raw_total = 0
    root = _open_root(workspace)
    try:
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for rel, info, parent, name in _walk(root):
                member = tarfile.TarInfo(rel)
                member.mode = info.st_mode & 0o777
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                if stat.S_ISDIR(info.st_mode):
                    member.type, member.mtime = tarfile.DIRTYPE, 0
                    tar.addfile(member)
                elif stat.S_ISLNK(info.st_mode):
                    member.type, member.mtime = tarfile.SYMTYPE, int(info.st_mtime)
                    member.linkname = os.readlink(name, dir_fd=parent)
                    tar.addfile(member)
                elif stat.S_ISREG(info.st_mode):
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
                    except OSError:
                        continue  # replaced by a link or removed meanwhile
                    try:
                        now = os.fstat(fd)
                        if not stat.S_ISREG(now.st_mode):
                            continue
                        raw_total += now.st_size
                        if raw_total > max_bytes * RAW_FACTOR:
                            raise _too_large(max_bytes, f"its files add up to more than {max_bytes * RAW_FACTOR // 2**20} MiB")
                        member.size, member.mtime = now.st_size, int(now.st_mtime)
                        taken = allocated_bytes(now.st_size, now.st_blocks * 512)
                        if taken < allocated_bytes(now.st_size):
                            member.pax_headers = {ALLOCATED_KEY: str(taken)}
                        tar.addfile(member, _Exactly(fd, now.st_size))  # type: ignore[arg-type]
                    finally:
                        os.close(fd)
                # fifos, sockets and devices are not workspace content
                if out.tell() > max_bytes:
                    raise _too_large(max_bytes, "the compressed archive passed the cap")
    finally:
        os.close(root)
    data = out.getvalue()
    if len(data) > max_bytes:
        raise _too_large(max_bytes, f"the compressed archive is {len(data)} bytes")
    return data


def _too_large(max_bytes: int, why: str) -> SnapshotTooLarge:
    return SnapshotTooLarge(
        f"The workspace is too large to snapshot ({why}; the cap is WORKSPACE_SNAPSHOT_MB="
        f"{max_bytes // 2**20} MiB compressed): delete large files from /workspace (build outputs, downloads), "
        "or raise WORKSPACE_SNAPSHOT_MB. Until then its files are not saved and would be lost with the sandbox."
    )


# -- applying an archive ---------------------------------------------------------------------


def _members(data: bytes, max_bytes: int) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    if len(data) > max_bytes:
        raise _too_large(max_bytes, f"the archive is {len(data)} bytes")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SandboxPathError(f"The workspace archive is not a readable .tar.gz ({exc}).") from None
    with tar:
        raw_total = 0
        for member in tar:
            raw_total += member.size
            if raw_total > max_bytes * RAW_FACTOR:
                raise _too_large(max_bytes, "its files add up to more than the cap allows")
            yield member, tar.extractfile(member) if member.isreg() else None


class _Folders:
    """Where the archive's entries go: the folder of the last entry stays open, so an archive in
    walk order (each entry in the folder of the one before, or one level below it) costs one
    open per folder rather than one per level per entry (a 1,500-deep tree: 0.1 s, not 17 s).
    One fd at a time; folders are created as needed (never through a link), given to `owner`."""

    def __init__(self, root: int, owner: tuple[int, int] | None) -> None:
        self.root, self.owner = root, owner
        self.rel: str | None = None
        self.fd = -1

    def parent_of(self, rel: str) -> tuple[int, str]:
        """The fd of the folder holding `rel` (valid until the next call) and its name."""
        folder, _, name = rel.rpartition("/")
        if self.rel is not None and folder != self.rel:
            here = self.rel + "/" if self.rel else ""
            if folder.startswith(here) and "/" not in folder[len(here):]:
                self._enter(self.fd, folder[len(here):], folder, close=True)
                return self.fd, name
        if folder != self.rel:
            self.close()
            fd = os.dup(self.root)
            self.fd, self.rel = fd, ""
            for part in folder.split("/") if folder else []:
                self._enter(self.fd, part, folder, close=True)
            self.rel = folder
        return self.fd, name

    def _enter(self, fd: int, part: str, folder: str, *, close: bool) -> None:
        try:
            child = _open_dir(part, fd)
        except FileNotFoundError:
            os.mkdir(part, 0o755, dir_fd=fd)
            child = _open_dir(part, fd)
            if self.owner is not None:
                os.fchown(child, *self.owner)
        except OSError as exc:
            raise SandboxPathError(f"{folder!r} cannot be written: it is not a folder ({exc.strerror}).") from None
        if close:
            os.close(fd)
        self.fd = child
        self.rel = folder if self.rel is None else (f"{self.rel}/{part}" if self.rel else part)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.rel = -1, None


def _clear(root: int) -> None:
    """Remove everything in the folder but the skills (never following links)."""
    with os.scandir(root) as scan:
        names = [entry.name for entry in scan]
    for name in names:
        if name == ".claude":
            try:
                claude = _open_dir(name, root)
            except OSError:
                os.unlink(name, dir_fd=root)
                continue
            try:
                with os.scandir(claude) as scan:
                    inner = [entry.name for entry in scan if entry.name != "skills"]
                for child in inner:
                    _remove_at(claude, child)
            finally:
                os.close(claude)
            continue
        _remove_at(root, name)


def _remove_at(dir_fd: int, name: str) -> None:
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(info.st_mode):
        remove_tree(dir_fd, name)  # by fds, iterative: resistant to symlink races and to depth
    else:
        os.unlink(name, dir_fd=dir_fd)


def restore_failure(exc: OSError) -> Exception:
    """What a restore that failed on `exc` raises: running out of the sandbox's disk says which
    limit to raise; anything else is `exc` itself."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SandboxError(
            "The workspace snapshot does not fit the sandbox's disk (SANDBOX_DISK_MB): the restore stopped "
            "part way. Raise SANDBOX_DISK_MB on the sandbox host; the snapshot is kept."
        )
    return exc


def unpack(workspace: Root, data: bytes, max_bytes: int, owner: tuple[int, int] | None = None,
           disk_limited: bool = False) -> int:
    """Make the workspace (skills untouched) hold exactly the archive's entries; return how many files.

    Entries that would leave the folder (absolute, `..`, through a link) are refused. `owner`:
    the (uid, gid) restored entries are given to; None: whoever owns the workspace folder, when
    that is not root. `disk_limited`: the folder is a filesystem of its own (the session's
    tmpfs), and an archive whose files cannot fit it is refused before anything is removed.
    """
    entries, raw = _check_members(data, max_bytes)  # refuse a bad archive before anything is removed
    root = _open_root(workspace)
    files = 0
    try:
        if owner is None:
            # Entries belong to whoever owns the workspace (the sandbox's user, when it is not root).
            found = os.fstat(root)
            if os.geteuid() == 0 and (found.st_uid, found.st_gid) != (0, 0):
                owner = (found.st_uid, found.st_gid)
        if disk_limited:
            _check_fits(root, entries, raw)
        _clear(root)
        folders = _Folders(root, owner)
        for member, content in _members(data, max_bytes):
            rel = clean_relative(member.name)
            if excluded(rel):
                continue
            parent, name = folders.parent_of(rel)
            try:
                if member.isdir():
                    try:
                        os.mkdir(name, 0o755, dir_fd=parent)
                    except FileExistsError:
                        pass
                    os.chmod(name, (member.mode & 0o777) | 0o700, dir_fd=parent, follow_symlinks=False)
                elif member.issym():
                    os.symlink(member.linkname, name, dir_fd=parent)
                elif member.isreg() and content is not None:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o600, dir_fd=parent)
                    with os.fdopen(fd, "wb") as handle:
                        if owner is not None:
                            os.fchown(handle.fileno(), *owner)
                        _copy_sparse(content, handle.fileno(), member.size)
                        os.fchmod(handle.fileno(), member.mode & 0o777)
                        os.utime(handle.fileno(), (member.mtime, member.mtime))
                    files += 1
                if owner is not None and (member.isdir() or member.issym()):
                    os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
            except BaseException:
                folders.close()
                raise
        folders.close()
    except OSError as exc:
        raise restore_failure(exc) from None
    finally:
        os.close(root)
    return files


def _copy_sparse(source: IO[bytes], fd: int, size: int) -> None:
    """Write `size` bytes from `source`, leaving every all-zero page a hole (what it was when saved)."""
    zero, zeros = bytes(_PAGE), bytes(_CHUNK)
    written = 0
    while written < size:
        chunk = source.read(min(_CHUNK, size - written))
        if not chunk:
            break
        if chunk == zeros[:len(chunk)]:  # a whole hole: one comparison at C speed
            written += len(chunk)
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), _PAGE):
            page = view[start:start + _PAGE]
            if page == zero[:len(page)]:
                continue
            os.pwrite(fd, page, written + start)
        written += len(chunk)
    os.ftruncate(fd, size)


def _check_fits(root: int, entries: int, raw: int) -> None:
    """Refuse an archive whose files are more than the workspace's filesystem can ever hold."""
    fs = os.fstatvfs(root)
    capacity = fs.f_blocks * fs.f_frsize
    if raw > capacity or (fs.f_files and entries > fs.f_files):
        raise SandboxError(
            f"The workspace snapshot holds {raw // 2**20} MiB in {entries} entries, more than the sandbox's disk "
            f"({capacity // 2**20} MiB, {fs.f_files} entries; SANDBOX_DISK_MB) can hold: it was not restored and "
            "the snapshot is kept. Raise SANDBOX_DISK_MB on the sandbox host, or download the files with "
            "GET /sessions/{sessionId}/files and delete large ones."
        )


def _check_members(data: bytes, max_bytes: int) -> tuple[int, int]:
    """Every entry's path stays inside, appears once, and passes through no link of the archive;
    return how many entries it has and how many bytes its files take on disk (`allocated_bytes`)."""
    seen: set[str] = set()
    links: list[str] = []
    raw = 0
    for member, _ in _members(data, max_bytes):
        if member.isreg():
            recorded = member.pax_headers.get(ALLOCATED_KEY, "")
            raw += allocated_bytes(member.size, int(recorded) if recorded.isdigit() else None)
        rel = clean_relative(member.name)
        if rel in seen:
            raise SandboxPathError(f"{rel!r} appears twice in the archive.")
        seen.add(rel)
        if member.issym():
            links.append(rel)
    if links:
        # Whatever their order in the archive, an entry below a link sorts right after "link/":
        # one bisection per link, not one lookup per level of every entry (deep trees stay linear).
        names = sorted(seen)
        for link in links:
            at = bisect.bisect_left(names, link + "/")
            if at < len(names) and names[at].startswith(link + "/"):
                raise SandboxPathError(f"{names[at]!r} cannot be written: {link} is a symbolic link in the archive.")
    return len(seen), raw


# -- reading and editing an archive without a sandbox ----------------------------------------


def archive_manifest(data: bytes, max_bytes: int) -> list[WorkspaceEntry]:
    """The entries of an archive, as `manifest` gives them for a live workspace."""
    entries = []
    for member, _ in _members(data, max_bytes):
        kind: EntryKind | None = "dir" if member.isdir() else "file" if member.isreg() else "symlink" if member.issym() else None
        if kind is not None:
            entries.append(WorkspaceEntry(member.name, kind, member.size if kind == "file" else 0, float(member.mtime)))
    # Folders are archived without times (they change with every file made in them); show the newest
    # inside, handed up one level at a time from the deepest entries (linear in the archive's size).
    newest: dict[str, float] = {}
    for entry in sorted(entries, key=lambda e: e.path.count("/"), reverse=True):
        folder = entry.path.rpartition("/")[0]
        if folder:
            newest[folder] = max(newest.get(folder, 0.0), newest.get(entry.path, entry.modified))
    return [WorkspaceEntry(e.path, e.kind, e.size, newest.get(e.path, e.modified)) if e.kind == "dir" else e for e in entries]


def archive_read(data: bytes, path: str, max_bytes: int) -> bytes:
    """One file's bytes from an archive; refuses links and folders like the live workspace does."""
    rel = clean_relative(path)
    for member, content in _members(data, max_bytes):
        if member.name != rel:
            continue
        if member.issym():
            raise SandboxPathError(f"{WORKSPACE}/{rel} is a symbolic link; links are not followed.")
        if member.isdir() or content is None:
            raise SandboxPathError(f"{WORKSPACE}/{rel} is a folder, not a file.")
        return content.read()
    raise SandboxFileNotFound(f"No file at {WORKSPACE}/{rel}.")


def archive_edit(data: bytes | None, path: str, content: bytes | None, max_bytes: int,
                 mtime: float) -> tuple[bytes, bool]:
    """A new archive with `path` replaced by `content` (or removed when None); and whether it changed.

    Writing through a symlink or over a folder is refused, as in a live workspace.
    """
    rel = clean_relative(path)
    parents = {"/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)}
    out = io.BytesIO()
    changed = False
    seen_dirs: set[str] = set()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for member, body in (_members(data, max_bytes) if data is not None else iter(())):
            name = member.name
            if name in parents and member.issym():
                raise SandboxPathError(f"{WORKSPACE}/{rel} cannot be written: {WORKSPACE}/{name} is a symbolic link.")
            if name in parents and not member.isdir():
                raise SandboxPathError(f"{WORKSPACE}/{rel} cannot be written: {WORKSPACE}/{name} is not a folder.")
            if member.isdir():
                seen_dirs.add(name)
            if name == rel or name.startswith(rel + "/"):
                if member.issym() and content is not None:
                    raise SandboxPathError(f"{WORKSPACE}/{rel} is a symbolic link; it is not written through.")
                if member.isdir() and content is not None:
                    raise SandboxPathError(f"{WORKSPACE}/{rel} is a folder, not a file.")
                changed = True
                continue
            tar.addfile(member, body)
        if content is not None:
            for folder in sorted(parents - seen_dirs):
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(content), 0o644, int(mtime)
            tar.addfile(info, io.BytesIO(content))
            changed = True
    result = out.getvalue()
    if len(result) > max_bytes:
        raise _too_large(max_bytes, f"the archive would be {len(result)} bytes")
    return result, changed


def has_content(entries: list[WorkspaceEntry]) -> bool:
    """Whether a workspace holds anything worth keeping (an empty `.claude` folder is not)."""
    return any(e.path != ".claude" for e in entries)


class WorkspaceArchiveMixin:
    """Export and import of a workspace on this machine's disk, for LocalSandbox.

    Needs `self.files` (the DirTree on the workspace, whose root fd every walk starts from and
    whose `owner` is the session's uid and gid), `self.disk_limited` (the workspace is its own
    tmpfs) and `self._alive()`.
    """

    files: DirTree
    disk_limited: bool
    _alive: Callable[[], None]

    def export_workspace(self, max_bytes: int, unless_md5: str | None = None) -> bytes | None:
        """The workspace (without .claude/skills) as a .tar.gz; SnapshotTooLarge past `max_bytes`.

        None when `unless_md5` is the MD5 of the archive this sandbox last made or applied and
        no entry changed since: a walk instead of reading and compressing every file.
        """
        self._alive()
        root = self.files.root_fd
        before = signature(root)
        known = getattr(self, "_archive_seen", None)
        if unless_md5 is not None and known == (before, unless_md5):
            return None
        data = pack(root, max_bytes)
        self._archive_seen = (before, hashlib.md5(data).hexdigest())
        return data

    def import_workspace(self, archive: bytes, max_bytes: int) -> int:
        """Replace the workspace (skills untouched) by the archive's entries; return the file count.

        SandboxError when the archive cannot fit the workspace's disk (SANDBOX_DISK_MB).
        """
        self._alive()
        root = self.files.root_fd
        files = unpack(root, archive, max_bytes, owner=self.files.owner, disk_limited=self.disk_limited)
        self._archive_seen = (signature(root), hashlib.md5(archive).hexdigest())
        return files

    def workspace_entries(self) -> list[WorkspaceEntry]:
        """Every entry under /workspace but the skills, with sizes and modification times."""
        self._alive()
        return manifest(self.files.root_fd)
