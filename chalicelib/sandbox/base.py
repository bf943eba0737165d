"""The Sandbox interface: what a session needs from its isolated workspace.

The vocabulary follows hosted sandboxes (writeFile, exec, mountBucket) in Python style.
Every path is a sandbox path under /workspace; implementations refuse anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, SecretStr

if TYPE_CHECKING:  # the format module imports this one
    from chalicelib.sandbox.snapshot_format import SnapshotDelta

WORKSPACE = "/workspace"
CLAUDE_DIR = "/workspace/.claude"
#: Where a user's storage is mounted: their skills only (settings, conversations and the
#: bundle are never visible to the sandbox).
MOUNT_DIR = f"{CLAUDE_DIR}/skills"


class SandboxError(Exception):
    """Base class of sandbox errors."""


class SandboxPathError(SandboxError):
    """A path is outside /workspace or otherwise unusable."""


class SandboxIsADirectory(SandboxPathError):
    """A file operation was given a folder."""


class SandboxFileNotFound(SandboxError):
    """The file does not exist in the sandbox."""


class SandboxGone(SandboxError):
    """The sandbox was destroyed or reaped (idle timeout); set the session up again."""


class SandboxUnavailable(SandboxError):
    """The sandbox host cannot be reached or refused us."""


class SnapshotTooLarge(SandboxError):
    """The workspace's archive would pass WORKSPACE_SNAPSHOT_MB."""


class IsolationUnavailable(SandboxError):
    """Real isolation (bubblewrap) is missing and unisolated mode was not allowed."""


class MountError(SandboxError):
    """Mounting the user's storage failed or showed nothing; never reported as success."""


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one command. `*_truncated` is True when output passed the cap."""

    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    duration_ms: int = 0


@dataclass(frozen=True)
class WorkspaceEntry:
    """One entry of a workspace, relative to /workspace (`notes/a.txt`)."""

    path: str
    kind: Literal["file", "dir", "symlink"]
    size: int
    modified: float


@dataclass(frozen=True)
class FileEntry:
    """One entry of a listing: a path under /workspace."""

    path: str
    size: int
    is_dir: bool


class MountSpec(BaseModel):
    """What to mount at /workspace/.claude/skills (MOUNT_DIR): exactly one user's skills.

    `bind`: a host directory (the embedded store's `DATA_DIR/users/{userId}/skills`).
    `s3`: `bucket` + `prefix` (`users/{userId}/skills/`) through s3fs-FUSE; the credentials
    stay on the host side and never enter the sandbox.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["bind", "s3"]
    source_dir: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    # Set with temporary credentials (R2's temp-access-credentials): sent with every request.
    session_token: SecretStr | None = None
    # What storage lists under the prefix (paths relative to it). The mount is verified by
    # reading one of them through the sandbox, not by walking it all: s3fs HEADs every file a
    # walk meets, which made setup grow with the number of skills. Empty: walk the mount.
    expect: tuple[str, ...] = ()


class SandboxOptions(BaseModel):
    """Per-session policy, chosen by the server from the user's settings (never the client)."""

    model_config = ConfigDict(frozen=True)

    allow_network: bool = False
    # The user's `network` settings (host-name rules, normalised): used only with allow_network.
    network_allow: tuple[str, ...] = ()
    network_deny: tuple[str, ...] = ()


@runtime_checkable
class BashSession(Protocol):
    """A persistent shell for the agent's bash tool: cwd and environment carry over."""

    def run(self, command: str, *, timeout: float | None = None, max_output: int = 30_000) -> ExecResult:
        """Run one command in the shell. A hung command is killed at `timeout`; the session lives on."""
        ...

    def restart(self) -> None:
        """Kill the shell and start a fresh one (cwd back to /workspace, environment reset)."""
        ...


@runtime_checkable
class Sandbox(Protocol):
    """One session's isolated workspace."""

    session_id: str

    def write_file(self, path: str, content: bytes | str) -> None:
        """Create or replace a file (parents are created)."""
        ...

    def write_files(self, files: dict[str, bytes | str]) -> None:
        """Write many files at once (concurrently where the implementation can)."""
        ...

    def read_file(self, path: str) -> bytes:
        """Return a file's bytes; raise SandboxFileNotFound."""
        ...

    def list_files(self, path: str = WORKSPACE, *, recursive: bool = True) -> list[FileEntry]:
        """List entries under `path`."""
        ...

    def delete_file(self, path: str) -> None:
        """Delete a file or a folder (recursively); missing is not an error."""
        ...

    def exec(self, command: str, *, timeout: float | None = None, max_output: int = 100_000) -> ExecResult:
        """Run `command` with /bin/sh -c inside the sandbox, in /workspace."""
        ...

    def bash(self) -> BashSession:
        """The session's persistent shell (created on first use)."""
        ...

    def mount_bucket(self, spec: MountSpec) -> list[str]:
        """Mount the user's skills at /workspace/.claude/skills, verify it, return the listing seen.

        Raise MountError when the mount fails or shows nothing.
        """
        ...

    def destroy(self) -> None:
        """Stop every process and delete the workspace."""
        ...

    def export_workspace(self, max_bytes: int, unless_md5: str | None = None) -> bytes | None:
        """/workspace without .claude/skills as a deterministic .tar.gz (links archived, never
        followed); raise SnapshotTooLarge past `max_bytes`. None when `unless_md5` is the MD5 of
        the archive the sandbox last made or applied and nothing changed since."""
        ...

    def import_workspace(self, archive: bytes, max_bytes: int) -> int:
        """Make /workspace (skills untouched) hold exactly the archive's entries; return the file count."""
        ...

    def workspace_entries(self) -> list[WorkspaceEntry]:
        """Every entry under /workspace but the skills: path (relative), kind, size, modified."""
        ...

    def snapshot_unchanged(self) -> list[str]:
        """The root MD5s of the incremental snapshots this sandbox made or applied that its
        workspace still matches (a walk of lstats; nothing read)."""
        ...

    def snapshot_delta(self, max_bytes: int, base: str | None) -> SnapshotDelta | None:
        """The new objects and root of an incremental snapshot against the stored root whose MD5
        is `base` (see `snapshot_format`); None when the workspace still matches it."""
        ...

    def import_snapshot(self, root: bytes, objects: dict[str, bytes], max_bytes: int) -> int:
        """Make /workspace (skills untouched) hold exactly an incremental snapshot's entries."""
        ...


@dataclass(frozen=True)
class Placement:
    """Where the caller's session record (just read) places a session: a fleet host, or None
    (not placed yet, or a provider without hosts). Given to `create`, it spares the provider
    reading the record again; without it, a fleet looks the session up itself."""

    host: str | None


class SandboxProvider(Protocol):
    """Creates, finds and destroys sandboxes by session id."""

    #: "bwrap", "unisolated" or "remote"; reported by /health.
    kind: str

    def create(self, session_id: str, options: SandboxOptions, placement: Placement | None = None) -> Sandbox:
        """Create the session's sandbox, or return the existing one (idempotent)."""
        ...

    def get(self, session_id: str) -> Sandbox:
        """Return the live sandbox; raise SandboxGone."""
        ...

    def destroy(self, session_id: str) -> bool:
        """Destroy the sandbox; return False when there was none."""
        ...

    def supports_mount(self, spec: MountSpec) -> bool:
        """Whether `mount_bucket(spec)` can work here (FUSE and s3fs present, for s3)."""
        ...

    def limits(self) -> dict[str, str]:
        """Each limit of a whole sandbox and the mechanism enforcing it here ("none" when not), for /health."""
        ...
