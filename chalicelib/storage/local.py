"""The embedded store: objects as plain files under DATA_DIR, with S3's semantics.

Objects live at `DATA_DIR/<key>`, so `DATA_DIR/users/{userId}` *is* the user's tree and can be
bind-mounted into a sandbox. Writes are atomic (temp file + rename) and serialised per key with
`flock`, which excludes other threads and other processes alike, so conditional writes
(If-Match / If-None-Match) hold under concurrency. ETags are the content MD5, as S3's are for
single-part uploads, cached in an extended attribute so listing does not re-read every file.
"""

from __future__ import annotations

import base64
import builtins
import errno
import fcntl
import hashlib
import json
import logging
import mimetypes
import os
import stat as stat_module
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from chalicelib.storage.base import (
    ListPage,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StorageFull,
    StorageUnavailable,
    StoredObject,
)

log = logging.getLogger(__name__)

_INTERNAL = ".internal"
#: How long a writer waits for a key's lock before taking it over from a stopped holder. A
#: live holder keeps it for a precondition check and a rename (the bytes are synced before).
LOCK_TAKEOVER_SECONDS = 2.0
#: Bounded polling: well past LOCK_TAKEOVER_SECONDS at the poll intervals _locked uses.
LOCK_MAX_POLLS = 10_000
_ETAG_XATTR = "user.claude_agent.etag"
_MAX_KEY_BYTES = 1024


class LocalDirectoryStore:
    """An ObjectStore on a local directory; the default in development."""

    backend_name = "local"

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir).resolve()
        try:
            for sub in ("tmp", "locks"):
                (self.root / _INTERNAL / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"Cannot use DATA_DIR {str(self.root)!r}: {exc.strerror}.",
                hint="Point DATA_DIR at a writable directory.",
            ) from exc

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject:
        """Return the object's bytes and info; raise ObjectNotFound."""
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                body = handle.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        etag = _quoted(hashlib.md5(body).hexdigest())
        info = ObjectInfo(key=key, size=len(body), etag=etag, last_modified=_mtime(stat))
        return StoredObject(info=info, body=body, content_type=_content_type(key))

    def head(self, key: str) -> ObjectInfo:
        """Return the object's info; raise ObjectNotFound."""
        path = self._path(key)
        try:
            return self._info(key, path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = None,
        max_keys: int = 1000,
        continuation_token: str | None = None,
        start_after: str | None = None,
    ) -> ListPage:
        """List keys under `prefix` in UTF-8 byte order, like ListObjectsV2."""
        if delimiter not in (None, "/"):
            raise StorageError("The local store supports only '/' as a delimiter.")
        max_keys = max(1, min(max_keys, 1000))
        after, skip_prefix = _decode_token(continuation_token) if continuation_token else (start_after, None)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last: tuple[str, str | None] | None = None
        for key in self._keys_under(prefix):
            if after is not None and key.encode() <= after.encode():
                continue
            if skip_prefix is not None and key.startswith(skip_prefix):
                continue
            if delimiter:
                rest = key[len(prefix):]
                if delimiter in rest:
                    common = prefix + rest.split(delimiter, 1)[0] + delimiter
                    if prefixes and prefixes[-1] == common:
                        continue
                    if len(objects) + len(prefixes) == max_keys:
                        return ListPage(objects, prefixes, _encode_token(*last) if last else None)
                    prefixes.append(common)
                    last = (key, common)
                    skip_prefix = common
                    continue
            if len(objects) + len(prefixes) == max_keys:
                return ListPage(objects, prefixes, _encode_token(*last) if last else None)
            try:
                objects.append(self._info(key, self.root / key))
            except FileNotFoundError:
                continue  # deleted while we listed: S3 would not show it either
            last = (key, None)
        return ListPage(objects, prefixes, None)

    # -- writes --------------------------------------------------------------------------

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Write atomically; honour If-Match / If-None-Match like S3 (PreconditionFailed)."""
        path = self._path(key)
        etag = _quoted(hashlib.md5(body).hexdigest())
        # The bytes are written and synced before the key's lock is taken, so the lock is held
        # for a check and a rename only: microseconds, which is what lets a waiter take over a
        # lock whose holder stopped (see _locked).
        tmp = self.root / _INTERNAL / "tmp" / uuid.uuid4().hex
        try:
            with open(tmp, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            _set_etag_xattr(tmp, etag, os.stat(tmp))
            with self._locked(key) as lock:
                if if_match is not None or if_none_match:
                    self._check_preconditions(key, path, if_match, if_none_match)
                lock.confirm()
                self._replace(tmp, path, key)
                stat = os.stat(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _unavailable(key, exc) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return ObjectInfo(key=key, size=len(body), etag=etag, last_modified=_mtime(stat))

    def delete(self, key: str) -> None:
        """Delete the object (missing is fine) and prune empty folders above it."""
        path = self._path(key)
        with self._locked(key) as lock:
            lock.confirm()
            try:
                path.unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return
        self._prune(path.parent)

    def delete_many(self, keys: builtins.list[str]) -> int:  # `list` here is the method above
        """Delete each key; return how many existed."""
        deleted = 0
        for key in keys:
            path = self._path(key)
            existed = path.is_file()
            self.delete(key)
            deleted += int(existed)
        return deleted

    # -- internals -----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """Map a key to its file, refusing anything that could leave the root."""
        if not key or len(key.encode()) > _MAX_KEY_BYTES:
            raise StorageError(f"Invalid key {key!r}: it must be 1-{_MAX_KEY_BYTES} bytes.")
        parts = key.split("/")
        if (
            key.startswith("/")
            or "\x00" in key
            or "\\" in key
            or any(part in ("", ".", "..") for part in parts)
            or parts[0] == _INTERNAL
        ):
            raise StorageError(f"Invalid key {key!r} for the local store.")
        return self.root.joinpath(*parts)

    def _info(self, key: str, path: Path) -> ObjectInfo:
        stat = os.stat(path)
        if not _is_regular(stat):
            raise IsADirectoryError(key)
        etag = _get_etag_xattr(path, stat)
        if etag is None:
            with open(path, "rb") as handle:
                etag = _quoted(hashlib.md5(handle.read()).hexdigest())
        return ObjectInfo(key=key, size=stat.st_size, etag=etag, last_modified=_mtime(stat))

    def _keys_under(self, prefix: str) -> Iterator[str]:
        """Every key starting with `prefix`, in UTF-8 byte order."""
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return iter(())
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            if rel == _INTERNAL or rel.startswith(_INTERNAL + os.sep):
                dirnames[:] = []
                continue
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d != _INTERNAL]
            for name in filenames:
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort(key=lambda k: k.encode())
        return iter(keys)

    @contextmanager
    def _locked(self, key: str) -> Iterator[_KeyLock]:
        """Exclude other writers of `key` (threads and processes alike) for a check and a rename.

        A flock on the key's lock file, taken without blocking. A holder that does not let go
        within LOCK_TAKEOVER_SECONDS (a process stopped by SIGSTOP, frozen, or swapped out: a
        live one holds it for microseconds) is taken over: the waiter puts a fresh lock file in
        its place. The old holder, when it wakes up, finds its lock file replaced at
        `confirm()` and writes nothing (StorageUnavailable), so a paused holder never blocks
        the next writer and never overwrites what it wrote."""
        lock_path = self.root / _INTERNAL / "locks" / hashlib.sha1(key.encode()).hexdigest()
        deadline = time.monotonic() + LOCK_TAKEOVER_SECONDS
        fd = -1
        for attempt in range(LOCK_MAX_POLLS):
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = -1
                if time.monotonic() >= deadline:
                    fd = self._take_over(lock_path, key)
                    break
                time.sleep(min(0.001 * (attempt + 1), 0.02))
                continue
            if _same_file(lock_path, fd):
                break
            # Taken over while we waited: that file is no longer the key's lock.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            fd = -1
        if fd < 0:
            raise StorageUnavailable(f"Could not lock {key!r} for writing.", hint="Check DATA_DIR's filesystem.")
        try:
            yield _KeyLock(lock_path, fd, key)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _take_over(self, lock_path: Path, key: str) -> int:
        """Replace a lock file whose holder stopped with a fresh one, locked by us."""
        log.warning("the lock of %r was held for over %.0f s (a stopped process?): taking it over", key,
                    LOCK_TAKEOVER_SECONDS)
        fresh = lock_path.with_name(f"{lock_path.name}.{uuid.uuid4().hex}")
        fd = os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(fresh, lock_path)
        return fd

    def _check_preconditions(self, key: str, path: Path, if_match: str | None, if_none_match: bool) -> None:
        try:
            current = self._info(key, path).etag
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            current = None
        if if_none_match and current is not None:
            raise PreconditionFailed(key, "an object already exists (If-None-Match: *)")
        if if_match is not None:
            if current is None:
                raise PreconditionFailed(key, "no object exists to match (If-Match)")
            if if_match.strip() != "*" and _quoted(if_match.strip().strip('"')) != current:
                raise PreconditionFailed(key, f"the current ETag is {current}, not {if_match}")

    def _replace(self, tmp: Path, path: Path, key: str) -> None:
        # A concurrent delete may prune the parent folder between makedirs and rename.
        for _ in range(5):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
                return
            except FileNotFoundError:
                continue
            except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
                raise StorageError(f"Key {key!r} conflicts with an existing key: {exc}") from exc
        raise StorageError(f"Could not write {key!r}: its folder kept disappearing.")

    def _prune(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


class _KeyLock:
    """A key's lock as held by one writer."""

    def __init__(self, path: Path, fd: int, key: str) -> None:
        self.path = path
        self.fd = fd
        self.key = key

    def confirm(self) -> None:
        """Raise StorageUnavailable if another writer took the lock over (we were stopped):
        checked just before the rename, so a writer that lost its lock changes nothing."""
        if not _same_file(self.path, self.fd):
            raise StorageUnavailable(
                f"The write of {self.key!r} was abandoned: this process stalled while holding the key's lock and "
                "another writer took it over.", hint="Retry the write.",
            )


def _same_file(path: Path, fd: int) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


def _unavailable(key: str, exc: OSError) -> StorageError:
    """A write the filesystem refused: nothing was written. Full, out of quota or read-only is
    StorageFull (retrying at once does not help); anything else StorageUnavailable."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return StorageFull(f"Could not write {key!r}: {exc.strerror or exc}; nothing was written.",
                           hint="Free space on DATA_DIR's filesystem (or make it writable).")
    return StorageUnavailable(f"Could not write {key!r}: {exc.strerror or exc}.", hint="Check DATA_DIR's filesystem.")


def _is_regular(stat: os.stat_result) -> bool:
    return stat_module.S_ISREG(stat.st_mode)


def _quoted(etag: str) -> str:
    return f'"{etag}"'


def _mtime(stat: os.stat_result) -> datetime:
    return datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=timezone.utc)


def _content_type(key: str) -> str:
    if key.endswith(".md"):
        return "text/markdown; charset=utf-8"
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def _set_etag_xattr(path: Path, etag: str, stat: os.stat_result) -> None:
    # The cached ETag carries the stat it was computed for, so an edit made outside the store
    # (say, through a sandbox's bind mount) makes it stale instead of wrong.
    try:
        os.setxattr(path, _ETAG_XATTR, json.dumps([etag, stat.st_size, stat.st_mtime_ns]).encode())
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            raise


def _get_etag_xattr(path: Path, stat: os.stat_result) -> str | None:
    try:
        etag, size, mtime_ns = json.loads(os.getxattr(path, _ETAG_XATTR))
    except (OSError, ValueError):
        return None
    if size != stat.st_size or mtime_ns != stat.st_mtime_ns:
        return None
    return str(etag)


def _encode_token(after: str, skip_prefix: str | None) -> str:
    raw = json.dumps({"a": after, "p": skip_prefix}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str | None, str | None]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return data["a"], data["p"]
    except (ValueError, KeyError, TypeError):
        raise StorageError("Invalid continuation token.") from None
