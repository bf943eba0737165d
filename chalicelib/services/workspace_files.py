"""Workspace files over REST: list, download, upload and delete files of a session's /workspace.

While the sandbox runs, every call goes through it (confined as the agent's editor is: `..`,
absolute paths outside /workspace and links the agent planted are refused), and a change is
snapshotted at once, so the file survives the sandbox. When the sandbox is gone (reaped, its
host lost, or destroyed), the same calls read and edit the latest snapshot in the bucket.
The skills (`/workspace/.claude/skills`) are not workspace files: the skills API manages them.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import posixpath
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Literal, TypeVar

from chalicelib.config import Settings
from chalicelib.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, ServiceUnavailable
from chalicelib.ids import validate_id
from chalicelib.sandbox import archive
from chalicelib.sandbox.base import (
    WORKSPACE,
    Sandbox,
    SandboxError,
    SandboxFileNotFound,
    SandboxGone,
    SandboxPathError,
    SandboxUnavailable,
    WorkspaceEntry,
)
from chalicelib.sandbox.snapshot_format import SnapshotDamaged
from chalicelib.services.models import ApiModel
from chalicelib.services.sessions import SessionsService
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots

Source = Literal["sandbox", "snapshot", "unrestored"]
T = TypeVar("T")


class WorkspaceFile(ApiModel):
    """One entry. A name that is not UTF-8 shows with `\\xNN` escapes in `path`, and its exact
    bytes (base64 of the whole path) in `pathBytes`, which is null for every other name."""

    path: str
    path_bytes: str | None = None
    size: int
    modified: datetime
    type: Literal["file", "dir", "symlink"]


class FileListing(ApiModel):
    session_id: str
    source: Source
    files: list[WorkspaceFile]
    count: int


class FileWritten(ApiModel):
    status: Literal["written"] = "written"
    session_id: str
    path: str
    size: int
    source: Source


class FileDeleted(ApiModel):
    status: Literal["deleted"] = "deleted"
    session_id: str
    path: str
    source: Source


class FileContent(ApiModel):
    """A downloaded file: its bytes and the content type its name suggests."""

    path: str
    data: bytes
    content_type: str


class WorkspaceFilesService:
    """The files API, through the live sandbox or the stored snapshot."""

    def __init__(self, settings: Settings, sessions: SessionsService, snapshots: WorkspaceSnapshots,
                 check_storage: Callable[[str, int], None] | None = None) -> None:
        # `check_storage(owner, adding)` refuses an upload past the owner's USER_STORAGE_MB.
        self.check_storage = check_storage
        self.settings = settings
        self.sessions = sessions
        self.snapshots = snapshots

    # -- the four calls --------------------------------------------------------------------

    def list(self, session_id: str, snapshot: str | None = None) -> FileListing:
        """Every file, folder and link of the workspace but the skills, sorted by path.

        `snapshot=unrestored`: the snapshot that could not be restored, kept apart (setup and the
        turn's `workspace_not_restored` say when there is one)."""
        if self._unrestored(snapshot):
            owner = self._unrestored_owner(session_id)
            aside = self._through(lambda: self.snapshots.entries(session_id, owner, unrestored=True))
            if aside is None:
                raise self._nothing_aside(session_id)
            files = [_file(e) for e in sorted(aside, key=lambda e: e.path)]
            return FileListing(session_id=session_id, source="unrestored", files=files, count=len(files))
        owner, sandbox = self._locate(session_id)
        if sandbox is not None:
            entries = self._through(lambda: sandbox.workspace_entries())
            source: Source = "sandbox"
        else:
            entries = self._through(lambda: self.snapshots.entries(session_id, owner) or [])
            source = "snapshot"
        files = [_file(e) for e in sorted(entries, key=lambda e: e.path)]
        return FileListing(session_id=session_id, source=source, files=files, count=len(files))

    def read(self, session_id: str, path: str | None, snapshot: str | None = None) -> FileContent:
        """One file's bytes; 404 when absent, 400 for a folder, a link or a path outside /workspace."""
        rel = self._path(path, writing=False)
        if self._unrestored(snapshot):
            owner = self._unrestored_owner(session_id)
            if not self.snapshots.has_unrestored(session_id, owner):
                raise self._nothing_aside(session_id)
            data = self._through(lambda: self.snapshots.read(session_id, owner, rel, unrestored=True))
            guessed = mimetypes.guess_type(posixpath.basename(rel))[0] or "application/octet-stream"
            return FileContent(path=f"{WORKSPACE}/{rel}", data=data, content_type=guessed)
        owner, sandbox = self._locate(session_id)
        if sandbox is not None:
            data = self._through(lambda: sandbox.read_file(f"{WORKSPACE}/{rel}"))
        else:
            data = self._through(lambda: self.snapshots.read(session_id, owner, rel))
        guessed = mimetypes.guess_type(posixpath.basename(rel))[0] or "application/octet-stream"
        return FileContent(path=f"{WORKSPACE}/{rel}", data=data, content_type=guessed)

    def write(self, session_id: str, path: str | None, body: bytes) -> FileWritten:
        """Create or replace a file with `body` (parents are created)."""
        rel = self._path(path, writing=True)
        limit = self.settings.workspace.upload_bytes
        if len(body) > limit:
            raise PayloadTooLarge(
                f"The file is {len(body)} bytes; uploads are capped at WORKSPACE_UPLOAD_MB="
                f"{self.settings.workspace.upload_mb} MiB. Split it, or raise WORKSPACE_UPLOAD_MB.",
                code="upload_too_large",
            )
        owner, sandbox = self._locate(session_id)
        if self.check_storage is not None:
            self.check_storage(owner, len(body))
        if sandbox is not None:
            self._through(lambda: sandbox.write_file(f"{WORKSPACE}/{rel}", body))
            self.snapshots.save(session_id, owner, sandbox)
            return FileWritten(session_id=session_id, path=f"{WORKSPACE}/{rel}", size=len(body), source="sandbox")
        self._through(lambda: self.snapshots.edit(session_id, owner, rel, body))
        return FileWritten(session_id=session_id, path=f"{WORKSPACE}/{rel}", size=len(body), source="snapshot")

    def delete(self, session_id: str, path: str | None, snapshot: str | None = None) -> FileDeleted:
        """Delete a file, a link or a folder (with its content); 404 when absent."""
        rel = self._path(path, writing=True)
        if self._unrestored(snapshot):
            owner = self._unrestored_owner(session_id)
            if not self.snapshots.has_unrestored(session_id, owner):
                raise self._nothing_aside(session_id)
            if not self._through(lambda: self.snapshots.edit(session_id, owner, rel, None, unrestored=True)):
                raise NotFound(f"No file at {WORKSPACE}/{rel} in the unrestored snapshot.", code="file_not_found")
            return FileDeleted(session_id=session_id, path=f"{WORKSPACE}/{rel}", source="unrestored")
        owner, sandbox = self._locate(session_id)
        if sandbox is not None:
            entries = self._through(lambda: sandbox.workspace_entries())
            if not any(e.path == rel for e in entries):
                raise NotFound(f"No file at {WORKSPACE}/{rel}.", code="file_not_found")
            self._through(lambda: sandbox.delete_file(f"{WORKSPACE}/{rel}"))
            self.snapshots.save(session_id, owner, sandbox)
            return FileDeleted(session_id=session_id, path=f"{WORKSPACE}/{rel}", source="sandbox")
        changed = self._through(lambda: self.snapshots.edit(session_id, owner, rel, None))
        if not changed:
            raise NotFound(f"No file at {WORKSPACE}/{rel}.", code="file_not_found")
        return FileDeleted(session_id=session_id, path=f"{WORKSPACE}/{rel}", source="snapshot")

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _unrestored(snapshot: str | None) -> bool:
        if snapshot is None:
            return False
        if snapshot != "unrestored":
            raise BadRequest(f"Query parameter snapshot={snapshot!r} is not known: leave it out for the workspace, "
                             "or give snapshot=unrestored for a snapshot that could not be restored.", code="invalid_request")
        return True

    def _unrestored_owner(self, session_id: str) -> str:
        validate_id(session_id, "sessionId")
        record = self.sessions.find_record(session_id)
        owner = record.user_id if record is not None else self.snapshots.last_owner(session_id)
        if owner is None:
            raise NotFound(f"Session {session_id!r} has no workspace.", code="session_not_found")
        return owner

    @staticmethod
    def _nothing_aside(session_id: str) -> NotFound:
        return NotFound(f"Session {session_id!r} has no snapshot set aside: every restore of it succeeded.",
                        code="snapshot_not_found")

    def _locate(self, session_id: str) -> tuple[str, Sandbox | None]:
        """The session's owner and live sandbox (None when gone); 404 for a session without either
        a record or a snapshot (never set up, expired, or its user erased)."""
        validate_id(session_id, "sessionId")
        record = self.sessions.find_record(session_id)
        if record is None:
            owner = self.snapshots.last_owner(session_id)
            if owner is None:
                raise NotFound(
                    f"Session {session_id!r} has no workspace: it was never set up, or it expired. "
                    f"Call POST /setup/{session_id}?userId=... first.",
                    code="session_not_found",
                )
            return owner, None
        try:
            return record.user_id, self.sessions.sandbox_for(session_id)
        except SandboxGone:
            return record.user_id, None
        except SandboxUnavailable as exc:
            raise ServiceUnavailable(f"The sandbox host cannot be reached: {exc}. Retry shortly.",
                                     code="sandbox_unavailable") from exc


    @staticmethod
    def _path(path: str | None, *, writing: bool) -> str:
        if not path:
            raise BadRequest("Query parameter path is required: the file's path under /workspace "
                             "(e.g. path=notes/todo.md or path=/workspace/notes/todo.md).", code="path_required")
        try:
            rel = archive.clean_relative(path)
        except SandboxPathError as exc:
            raise BadRequest(str(exc), code="invalid_path") from None
        if archive.excluded(rel):
            raise BadRequest(f"{WORKSPACE}/{rel} belongs to the skills: manage them with /users/{{userId}}/skills.",
                             code="invalid_path")
        return rel

    @staticmethod
    def _through(call: Callable[[], T]) -> T:
        """Run a sandbox or archive call, mapping its errors to the API's."""
        try:
            return call()
        except SandboxFileNotFound as exc:
            raise NotFound(str(exc), code="file_not_found") from None
        except SnapshotDamaged as exc:
            raise Conflict(f"{exc} The snapshot is damaged: its other files can still be read.",
                           code="snapshot_damaged") from None
        except SandboxPathError as exc:
            raise BadRequest(str(exc), code="invalid_path") from None
        except SandboxUnavailable as exc:
            raise ServiceUnavailable(f"The sandbox host cannot be reached: {exc}. Retry shortly.",
                                     code="sandbox_unavailable") from exc
        except SandboxError as exc:
            raise ServiceUnavailable(f"The sandbox failed: {exc}.", code="sandbox_failed") from exc
        except OSError as exc:
            # A link planted at the last component makes O_NOFOLLOW fail: say so.
            raise BadRequest(f"The path cannot be used ({exc.strerror}); links are not followed.",
                             code="invalid_path") from None


def _file(entry: WorkspaceEntry) -> WorkspaceFile:
    raw = os.fsencode(f"{WORKSPACE}/{entry.path}")
    try:
        shown, exact = raw.decode("utf-8"), None
    except UnicodeDecodeError:
        shown, exact = raw.decode("utf-8", "backslashreplace"), base64.b64encode(raw).decode()
    return WorkspaceFile(path=shown, path_bytes=exact, size=entry.size, type=entry.kind,
                         modified=datetime.fromtimestamp(entry.modified, timezone.utc))
