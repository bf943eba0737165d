"""Confining sandbox paths to /workspace, and touching workspace files from the host safely.

The server reads and writes workspace files from the host side (much faster than a process
per file) while the sandboxed agent, which is hostile, can rename, swap and symlink anything
in the workspace at the same moment. So no host path is ever resolved and then opened: every
operation starts from a directory fd held on the workspace root and goes down one component
at a time, each opened with O_NOFOLLOW|O_DIRECTORY (or in one openat2 call with
RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS where the kernel has it). A symlink anywhere on the way
is refused, never followed; a swap mid-walk can only make the walk fail. Every OSError
becomes a SandboxPathError or SandboxFileNotFound the agent can read.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from chalicelib.sandbox import linux
from chalicelib.sandbox.base import (
    WORKSPACE,
    SandboxError,
    SandboxFileNotFound,
    SandboxIsADirectory,
    SandboxPathError,
)

#: What the editor reads into the server's memory at most; bigger files are for bash (head, sed).
MAX_READ_BYTES = 32 * 1024 * 1024
#: Entries a listing returns at most (an agent can create millions of files).
MAX_LIST_ENTRIES = 100_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeChanged(SandboxError):
    """A folder was moved while a walk was inside it: the walk stops rather than guess."""


@dataclass(frozen=True)
class Found:
    """An entry met by `iter_tree`: its path below the top, lstat, and its folder's fd and name.

    `parent_fd` is open only until the walk goes on: use it at once (openat, readlinkat).
    Names are the kernel's bytes, carried as str with surrogate escapes (`os.fsencode` gives
    them back exactly), so no file name can make a walk fail.
    """

    rel: str
    info: os.stat_result
    parent_fd: int
    name: str


def iter_tree(top_fd: int, *, recursive: bool = True, sort: bool = False,
              skip: Callable[[str], bool] | None = None) -> Iterator[Found]:
    """Every entry below the folder `top_fd`, depth first, never following a link.

    Iterative and holding one folder fd at a time, whatever the depth: going down opens the
    child and closes the parent; coming back opens ".." and checks it is the folder it left
    (same device and inode), or raises TreeChanged. So a tree as deep as the kernel allows costs
    neither Python stack nor file descriptors. `skip(rel)`: entries left out (not descended).
    `top_fd` itself is neither closed nor moved.
    """
    fd = os.open(".", _DIR_FLAGS, dir_fd=top_fd)
    # One frame per level: the names still to visit, its path prefix and its identity.
    stack: list[tuple[list[str], str, tuple[int, int]]] = []
    try:
        names, prefix, ident = _listing(fd, sort), "", _identity(fd)
        while True:
            if not names:
                if not stack:
                    return
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                names, prefix, ident = stack.pop()
                if _identity(fd) != ident:
                    raise TreeChanged(f"{WORKSPACE}/{prefix.rstrip('/')} was moved during the walk; try again.")
                continue
            name = names.pop()
            rel = f"{prefix}{name}"
            if skip is not None and skip(rel):
                continue
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we walked
            yield Found(rel, info, fd, name)
            if not (recursive and stat.S_ISDIR(info.st_mode)):
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    continue  # replaced by a link or removed meanwhile: not followed
                raise
            stack.append((names, prefix, ident))
            os.close(fd)
            fd = child
            names, prefix, ident = _listing(fd, sort), rel + "/", _identity(fd)
    finally:
        os.close(fd)


#: Unlinks and folder moves one removal makes at most: an agent still writing cannot keep it busy forever.
MAX_REMOVE_STEPS = 50_000_000


def remove_tree(parent_fd: int, name: str) -> None:
    """`rm -r` of the folder `name` in `parent_fd`: never following a link, iterative, one fd at a time.

    shutil.rmtree recurses (a 1,500-deep tree is a RecursionError) and holds a fd per level;
    this goes down into the first subfolder it finds, empties it, comes back through ".."
    (checked to be the folder it left) and removes it.
    """
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    # One frame per level below `name`: the identity of the folder above and the child's name.
    stack: list[tuple[tuple[int, int], str]] = []
    try:
        for _ in range(MAX_REMOVE_STEPS):
            below = _first_subfolder_after_unlinking_files(fd)
            if below is not None:
                try:
                    child = os.open(below, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        continue  # changed meanwhile: look again
                    raise
                stack.append((_identity(fd), below))
                os.close(fd)
                fd = child
                continue
            if not stack:
                break
            ident, emptied = stack.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _identity(fd) != ident:
                raise TreeChanged(f"a folder was moved while {name} was being removed; try again.")
            try:
                os.rmdir(emptied, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise  # refilled meanwhile: the next round empties it again
        else:
            raise OSError(errno.EBUSY, f"{name} kept changing while it was being removed")
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _first_subfolder_after_unlinking_files(fd: int) -> str | None:
    with os.scandir(fd) as scan:
        names = [entry.name for entry in scan]
    for entry in names:
        try:
            info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            return entry
        try:
            os.unlink(entry, dir_fd=fd)
        except FileNotFoundError:
            pass
    return None


def remove_path(path: str) -> None:
    """Remove a file or folder tree by path (the server's own folders); a missing one is fine."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        parent_fd = os.open(parent, _DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            remove_tree(parent_fd, name)
        else:
            os.unlink(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent_fd)


def _listing(fd: int, sort: bool) -> list[str]:
    """The folder's names, reversed so that pop() gives them in order."""
    with os.scandir(fd) as scan:
        names = [entry.name for entry in scan]
    if sort:
        # By bytes, as tar and a C locale order them; the same order for the same names.
        names.sort(key=os.fsencode)
    names.reverse()
    return names


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def relative(path: str) -> str:
    """The path relative to /workspace ('.' for /workspace itself); refuse anything outside."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SandboxPathError(f"Invalid path {path!r}: give a path under {WORKSPACE}.")
    absolute = path if path.startswith("/") else f"{WORKSPACE}/{path}"
    normal = posixpath.normpath(absolute)
    if normal != WORKSPACE and not normal.startswith(WORKSPACE + "/"):
        raise SandboxPathError(f"Path {path!r} is outside {WORKSPACE}: only files under {WORKSPACE} can be used.")
    return posixpath.relpath(normal, WORKSPACE)


def parts_of(rel: str) -> list[str]:
    """The components of a relative path from `relative` ([] for the root)."""
    return [] if rel == "." else rel.split("/")


@dataclass(frozen=True)
class Entry:
    """One entry found by `DirTree.walk`: its path relative to the tree's root."""

    rel: str
    size: int
    is_dir: bool


def translate(exc: OSError, path: str) -> SandboxError:
    """The sandbox error (with what to do) for an OSError met while handling `path`."""
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return SandboxFileNotFound(f"No file or folder at {path}.")
    if code in (errno.ELOOP, errno.EXDEV, errno.EMLINK):
        return SandboxPathError(
            f"{path} goes through a symbolic link (or leaves {WORKSPACE}): the editor never follows links. "
            "Use the real path of the file."
        )
    if code == errno.EISDIR:
        return SandboxIsADirectory(f"{path} is a folder, not a file.")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return SandboxError(f"The workspace is full (writing {path}): delete files you no longer need, then retry.")
    if code == errno.ENXIO:
        return SandboxPathError(f"{path} is not a regular file (a FIFO or socket): the editor reads and writes files only.")
    if code == errno.EAGAIN:
        return SandboxPathError(f"{path} changed while it was being opened: try again.")
    return SandboxPathError(f"Cannot use {path}: {exc.strerror or exc}.")


class DirTree:
    """Host-side file operations confined to one directory, through fds only.

    `root_fd` stays open for the tree's life, so the tree is the directory object itself, not
    whatever later sits at its path. `owner` (uid, gid): files and folders created here are
    given to the session's uid through their fd, so the sandbox can use them.
    """

    def __init__(self, root_fd: int, owner: tuple[int, int] | None = None) -> None:
        self.root_fd = root_fd
        self.owner = owner

    @classmethod
    def open(cls, path: str, owner: tuple[int, int] | None = None) -> DirTree:
        """A tree on the directory at the host path `path` (opened once, without following a last-component link)."""
        return cls(os.open(path, _DIR_FLAGS), owner)

    def close(self) -> None:
        """Release the root fd."""
        try:
            os.close(self.root_fd)
        except OSError:
            pass

    def vanished(self) -> bool:
        """Whether the root folder was deleted underneath (its fd now points at an unlinked folder)."""
        try:
            return os.fstat(self.root_fd).st_nlink == 0
        except OSError:
            return True

    # -- walking -------------------------------------------------------------------------

    @contextmanager
    def directory(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """An fd of the folder at `parts` below the root, closed on exit; optionally created."""
        fd = self._open_dir(parts, create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_dir(self, parts: list[str], create: bool) -> int:
        if not parts:
            return self._reopen_root()
        try:
            fd = linux.openat2_beneath(self.root_fd, "/".join(parts), os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if not create:
                raise
            fd = None
        if fd is not None:
            return fd
        # Fallback and creation: one component at a time, never following a link.
        fd = self._reopen_root()
        try:
            for name in parts:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError:
                    # O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR: name the real reason.
                    if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise OSError(errno.ELOOP, "a symbolic link on the way", name) from None
                    raise
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: the open below checks what it is
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    self._own(child)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _reopen_root(self) -> int:
        """A new open of the root folder: a dup would share its read position with every other
        walk of the tree (request threads, snapshot exports) and scan it from wherever they left it."""
        return os.open(".", _DIR_FLAGS, dir_fd=self.root_fd)

    def _own(self, fd: int) -> None:
        if self.owner is not None:
            os.fchown(fd, *self.owner)

    # -- operations ----------------------------------------------------------------------

    def read(self, parts: list[str], limit: int = MAX_READ_BYTES) -> bytes:
        """The bytes of the regular file at `parts`."""
        if not parts:
            raise OSError(errno.EISDIR, "Is a directory")
        with self.directory(parts[:-1]) as parent:
            # O_NONBLOCK: a FIFO planted by the agent must not hang the server.
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise OSError(errno.EISDIR, "Is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.ENXIO, "not a regular file")
            if info.st_size > limit:
                raise OSError(errno.EFBIG, f"the file has {info.st_size} bytes, more than the {limit} the editor reads; use bash (head, sed -n)")
            chunks: list[bytes] = []
            total = 0
            while total <= limit:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)[:limit]
        finally:
            os.close(fd)

    def write(self, parent: int, name: str, data: bytes) -> None:
        """Create or replace the regular file `name` in the folder fd `parent`."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=parent)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.ENXIO, "not a regular file")
            os.ftruncate(fd, 0)
            self._own(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def delete(self, parts: list[str]) -> None:
        """Delete the file or folder at `parts` (the root: everything in it); missing is fine."""
        try:
            with self.directory(parts[:-1] if parts else []) as parent:
                names = [parts[-1]] if parts else os.listdir(parent)
                for name in names:
                    try:
                        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        remove_tree(parent, name)
                    else:
                        os.unlink(name, dir_fd=parent)
        except (FileNotFoundError, NotADirectoryError):
            return

    def kind(self, parts: list[str]) -> str:
        """'dir', 'file' (anything else that is not a folder), raising when missing."""
        if not parts:
            return "dir"
        with self.directory(parts[:-1]) as parent:
            info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        return "dir" if stat.S_ISDIR(info.st_mode) else "file"

    def stat_file(self, parts: list[str]) -> os.stat_result:
        """lstat of the entry at `parts`."""
        with self.directory(parts[:-1]) as parent:
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)

    def walk(self, parts: list[str], *, recursive: bool, skip_top: frozenset[str] = frozenset()) -> list[Entry]:
        """Entries under the folder at `parts` (relative to the root), never following links.

        `skip_top`: names left out at the first level (a mount shown elsewhere).
        """
        found: list[Entry] = []
        prefix = "/".join(parts)
        with self.directory(parts) as top:
            for entry in iter_tree(top, recursive=recursive, skip=lambda rel: rel in skip_top):
                if len(found) >= MAX_LIST_ENTRIES:
                    break
                is_dir = stat.S_ISDIR(entry.info.st_mode)
                rel = f"{prefix}/{entry.rel}" if prefix else entry.rel
                found.append(Entry(rel=rel, size=0 if is_dir else entry.info.st_size, is_dir=is_dir))
        return found

