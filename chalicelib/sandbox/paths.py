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
import shutil
import stat
from collections.abc import Iterator
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
                        # rmtree with dir_fd walks by fds and never follows links.
                        shutil.rmtree(name, dir_fd=parent)  # type: ignore[call-arg]
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
            self._walk(top, prefix, recursive, skip_top, found)
        return found

    def _walk(self, fd: int, prefix: str, recursive: bool, skip: frozenset[str], found: list[Entry]) -> None:
        subdirs: list[str] = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if len(found) >= MAX_LIST_ENTRIES:
                    return
                if entry.name in skip:
                    continue
                rel = f"{prefix}/{entry.name}" if prefix else entry.name
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                is_dir = stat.S_ISDIR(info.st_mode)
                found.append(Entry(rel=rel, size=0 if is_dir else info.st_size, is_dir=is_dir))
                if is_dir:
                    subdirs.append(entry.name)
        if not recursive:
            return
        for name in subdirs:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # swapped for a link or removed meanwhile: not followed
            try:
                self._walk(child, f"{prefix}/{name}" if prefix else name, True, frozenset(), found)
            finally:
                os.close(child)
