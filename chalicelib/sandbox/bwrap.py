"""Local sandboxes on bubblewrap: one isolated /workspace per session.

Every command runs under `bwrap` with a read-only system, only /workspace and a private,
size-limited /tmp writable, no network unless the user's settings allow it (and then a network
namespace of its own whose only way out is the egress proxy: `netns.py`), its own pid
namespace and /proc, a cleared environment (no API keys, AWS or R2 credentials), every
capability dropped, and limits on the sandbox as a whole.

Run as root (the sandbox host, ./scripts/dev as root), each session also gets:
- its own unprivileged uid/gid (`uids.py`), in a user namespace: bwrap is started as that uid
  (`--unshare-user`), so its files on the host belong to it and not to root, and a setuid bit
  set inside gives nothing;
- a workspace that is its own tmpfs, `size=SANDBOX_DISK_MB,nosuid,nodev`, owned by that uid;
- its own cgroup (`cgroups.py`): `pids.max` = SANDBOX_PIDS and a memory limit of
  SANDBOX_MEMORY_MB for all its processes together (RLIMIT_NPROC on the per-session uid when
  cgroups are not writable).
The sandbox's folders sit in SANDBOX_ROOT (0700, root's), which the session's uid cannot pass:
each launch first binds the workspace onto a neutral stage folder in a private mount
namespace of its own, and then drops to the uid and starts bwrap from there.

The user's skills can be mounted at /workspace/.claude/skills (a bind mount of the embedded
store, or s3fs for S3/R2); the mount is verified and never reported as working when it is not.
"""

from __future__ import annotations

import logging
import os
import resource
import shlex
import shutil
import stat
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

from chalicelib.config import Settings
from chalicelib.ids import validate_id
from chalicelib.sandbox import leftovers, linux, paths
from chalicelib.sandbox.archive import WorkspaceArchiveMixin
from chalicelib.sandbox.base import (
    MOUNT_DIR,
    WORKSPACE,
    ExecResult,
    FileEntry,
    IsolationUnavailable,
    MountError,
    MountSpec,
    Placement,
    SandboxError,
    SandboxGone,
    SandboxIsADirectory,
    SandboxOptions,
)
from chalicelib.sandbox.bwrap_argv import HostLayout, LaunchPlan, bwrap_argv
from chalicelib.sandbox.cgroups import Cgroups, Counters, SessionCgroup
from chalicelib.sandbox.egress_policy import AddressGuard
from chalicelib.sandbox.egress_proxy import PROXY_ENVIRONMENT, EgressProxy
from chalicelib.sandbox.incremental import IncrementalSnapshotMixin
from chalicelib.sandbox.netns import SandboxNetwork, create_network
from chalicelib.sandbox.process import run_capped
from chalicelib.sandbox.shell import BashSession, Launch
from chalicelib.sandbox.uids import DEFAULT_UID_DIR, UidAllocator

log = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# The stage: empty folders every uid can pass, where a launch binds its session's workspace
# (in its own mount namespace only) so bwrap, started as the session's uid, can reach it.
_STAGE_CANDIDATES = (Path("/run/claude-agent-sandbox/stage"), Path("/tmp/claude-agent-sandbox-stage"))
_MOUNT_REL = paths.relative(MOUNT_DIR)
_FULL_DISK = b"No space left on device"
_NO_FORK = b"Resource temporarily unavailable"


class LocalSandbox(WorkspaceArchiveMixin, IncrementalSnapshotMixin):
    """One session's workspace on this machine."""

    def __init__(self, session_id: str, root: Path, provider: LocalSandboxProvider, options: SandboxOptions) -> None:
        self.session_id = session_id
        self.root = root
        self.workspace = root / "workspace"
        self.settings = provider.settings
        self.options = options
        self.isolated = provider.isolated
        self.provider = provider
        self.claude_source: Path | None = None
        self._claude_tree: paths.DirTree | None = None
        self._s3fs_mountpoint: Path | None = None
        self._bash: BashSession | None = None
        self._lock = threading.Lock()
        self.destroyed = False
        self.uid: int | None = None
        self.cgroup: SessionCgroup | None = None
        self.disk_limited = False
        self.network: SandboxNetwork | None = None
        try:
            self._prepare()
        except BaseException:
            self._teardown()
            raise

    def _prepare(self) -> None:
        sandbox = self.settings.sandbox
        self.root.mkdir(mode=0o700)
        os.chmod(self.root, 0o700)
        # Mounts are taken down through this fd: the folder may have been renamed meanwhile (a
        # test run's temporary folder is), and a path would then miss them.
        self._root_fd: int | None = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.workspace.mkdir(mode=0o700)
        if self.provider.uids is not None:
            self.uid = self.provider.uids.allocate(self.session_id)
            # A tmpfs of its own: the kernel enforces its size, and nosuid,nodev hold on the host.
            linux.mount("tmpfs", str(self.workspace), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                        f"size={sandbox.disk_mb}m,nr_inodes={max(4096, sandbox.disk_mb * 256)},mode=0700,"
                        f"uid={self.uid},gid={self.uid}")
            self.disk_limited = True
        if self.provider.cgroups is not None:
            self.cgroup = self.provider.cgroups.create(
                f"{self.session_id}-{self.uid}", pids=sandbox.pids, memory_bytes=sandbox.memory_mb * 1024 * 1024)
        self.files = paths.DirTree.open(str(self.workspace), self.owner)
        self._identity = os.fstat(self.files.root_fd)
        self._apply_network()

    def _apply_network(self) -> None:
        """Give a network-on sandbox its namespace and proxy rules; take them from a network-off one."""
        egress = self.provider.egress
        if egress is None:
            return  # network-on falls back to --unshare-net: no way out at all
        if not self.options.allow_network:
            if self.network is not None:
                egress.detach(self.session_id)
                self.network.close()
                self.network = None
            return
        rules = egress.rules_for(self.options.network_allow, self.options.network_deny)
        if self.network is None:
            self.network = create_network()
            egress.attach(self.session_id, self.network, rules)
        else:
            egress.set_rules(self.session_id, rules)

    def set_options(self, options: SandboxOptions) -> None:
        """New per-session policy (the user's settings changed): the shell restarts under it."""
        if options == self.options:
            return
        self.options = options
        self._apply_network()
        self._restart_bash()

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who files created from the host belong to: the session's uid (None: the server's)."""
        return (self.uid, self.uid) if self.uid is not None else None

    # -- files ---------------------------------------------------------------------------

    def _locate(self, path: str) -> tuple[paths.DirTree, list[str]]:
        """The tree (workspace, or the skills mount) and the components of a sandbox path."""
        self._alive()
        rel = paths.relative(path)
        if self._claude_tree is not None and (rel == _MOUNT_REL or rel.startswith(_MOUNT_REL + "/")):
            return self._claude_tree, paths.parts_of(os.path.relpath(rel, _MOUNT_REL))
        return self.files, paths.parts_of(rel)

    def write_file(self, path: str, content: bytes | str) -> None:
        """Create or replace a file; parents are created."""
        self.write_files({path: content})

    def write_files(self, files: dict[str, bytes | str]) -> None:
        """Write many files in one pass: every path is checked before anything is written.

        Each folder is walked (and created) once per batch, not once per file, through fds:
        100 files in 10 folders take 1.15 ms here (scripts/bench_sandbox.py).
        """
        targets = {path: self._locate(path) for path in files}
        for path, (_, parts) in targets.items():
            if not parts:
                raise SandboxIsADirectory(f"{path!r} is a folder.")
        folders: dict[tuple[int, tuple[str, ...]], int] = {}
        try:
            for path, (tree, parts) in targets.items():
                content = files[path]
                data = content.encode() if isinstance(content, str) else content
                try:
                    key = (id(tree), tuple(parts[:-1]))
                    if key not in folders:
                        folders[key] = tree._open_dir(parts[:-1], create=True)
                    tree.write(folders[key], parts[-1], data)
                except OSError as exc:
                    raise paths.translate(exc, path) from None
        finally:
            for fd in folders.values():
                os.close(fd)

    def read_file(self, path: str) -> bytes:
        tree, parts = self._locate(path)
        try:
            return tree.read(parts)
        except OSError as exc:
            raise paths.translate(exc, path) from None

    def list_files(self, path: str = WORKSPACE, *, recursive: bool = True) -> list[FileEntry]:
        tree, parts = self._locate(path)
        base = MOUNT_DIR if tree is self._claude_tree else WORKSPACE
        try:
            if tree.kind(parts) != "dir":
                info = tree.stat_file(parts)
                return [FileEntry(path=_join(base, "/".join(parts)), size=info.st_size, is_dir=False)]
            found = tree.walk(parts, recursive=recursive)
        except OSError as exc:
            raise paths.translate(exc, path) from None
        entries = [FileEntry(path=_join(base, e.rel), size=e.size, is_dir=e.is_dir) for e in found]
        if tree is self.files and self._claude_tree is not None:
            # The mount point's folder on the host side is empty: show the mount instead.
            entries = [e for e in entries if e.path != MOUNT_DIR and not e.path.startswith(MOUNT_DIR + "/")]
            here = _join(WORKSPACE, "/".join(parts))
            if recursive and MOUNT_DIR.startswith(here.rstrip("/") + "/"):
                entries.append(FileEntry(path=MOUNT_DIR, size=0, is_dir=True))
                entries += self.list_files(MOUNT_DIR)
        return sorted(entries, key=lambda e: e.path)

    def delete_file(self, path: str) -> None:
        tree, parts = self._locate(path)
        try:
            tree.delete(parts)
        except OSError as exc:
            raise paths.translate(exc, path) from None

    # -- commands ------------------------------------------------------------------------

    def command(self, argv: list[str], *, network: bool | None = None) -> list[str]:
        """The full argv that runs `argv` inside this sandbox."""
        if not self.isolated:
            return argv
        allow_network = self.options.allow_network if network is None else network
        stage = self.provider.stage
        skills_source = None
        if self.claude_source is not None:
            skills_source = str(stage / "skills") if stage is not None else str(self.claude_source)
        return bwrap_argv(LaunchPlan(
            bwrap=self.provider.bwrap,
            layout=self.provider.layout,
            workspace_source=str(stage / "workspace") if stage is not None else str(self.workspace),
            skills_source=skills_source,
            tmp_bytes=self.settings.sandbox.tmp_mb * 1024 * 1024,
            environment=self.environment(),
            # With the network on, the pre-exec step has joined the sandbox's own namespace.
            network=allow_network and self.network is not None,
            disable_userns=self.provider.can_disable_userns,
        ), argv)

    def environment(self) -> dict[str, str]:
        """The only environment a sandboxed process gets: nothing from the server."""
        home = WORKSPACE if self.isolated else str(self.workspace)
        env = {"HOME": home, "PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "TERM": "dumb", "USER": "sandbox", "PWD": home}
        if self.options.allow_network and self.network is not None:
            env |= PROXY_ENVIRONMENT
        return env

    def preexec(self) -> Callable[[], None]:
        """What the child does before exec: join the cgroup, set rlimits, stage the workspace, drop to the uid."""
        sandbox = self.settings.sandbox
        cpu = sandbox.cpu_seconds
        memory = sandbox.memory_mb * 1024 * 1024
        # Without its own tmpfs, a per-file cap is all that bounds the workspace; with one, the
        # tmpfs answers ENOSPC (a clear error) and SIGXFSZ would only muddle it.
        file_size = resource.RLIM_INFINITY if self.disk_limited else sandbox.disk_mb * 1024 * 1024
        uid, cgroup, stage = self.uid, self.cgroup, self.provider.stage
        workspace, skills = str(self.workspace), (str(self.claude_source) if self.claude_source else None)
        nproc = sandbox.pids
        network = self.network.ns_fd if self.network is not None and self.options.allow_network else None

        def apply() -> None:
            if cgroup is not None:
                cgroup.join()
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
            if uid is not None and stage is not None:
                # Counted per uid: with a uid per session, a per-sandbox process limit.
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
                linux.unshare_mounts()
                if network is not None:
                    linux.enter_network(network)  # as root, before the uid drop: the sandbox cannot leave it
                linux.mount(workspace, str(stage / "workspace"), None, linux.MS_BIND | linux.MS_REC)
                if skills is not None:
                    linux.mount(skills, str(stage / "skills"), None, linux.MS_BIND | linux.MS_REC)
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)

        return apply

    def launch(self, argv: list[str]) -> Launch:
        """How to start `argv` in this sandbox (used by the persistent shell)."""
        return Launch(
            argv=self.command(argv),
            env=self.environment() if not self.isolated else {},
            cwd=None if self.isolated else str(self.workspace),
            preexec=self.preexec(),
        )

    def exec(self, command: str, *, timeout: float | None = None, max_output: int = 100_000) -> ExecResult:
        """Run `command` with /bin/sh -c in /workspace."""
        self._alive()
        launch = self.launch(["/bin/sh", "-c", command])
        return run_capped(
            launch.argv,
            timeout=timeout or self.settings.sandbox.command_timeout_seconds,
            max_output=max_output, env=launch.env, cwd=launch.cwd, preexec=launch.preexec,
        )

    def bash(self) -> BashSession:
        with self._lock:
            self._alive()
            if self._bash is None:
                self._bash = BashSession(self, self.settings.sandbox.command_timeout_seconds)
            return self._bash

    # -- what the shell asks -------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise SandboxGone when the sandbox was destroyed or its workspace vanished."""
        self._alive()

    def before_command(self) -> Counters:
        """The limit counters before a command, to tell afterwards which limit it hit."""
        return self.cgroup.counters() if self.cgroup is not None else Counters()

    def after_command(self, before: object, output: bytes) -> tuple[str, bool]:
        """A note for the agent when the command ran into a limit, and whether to stop what it left running."""
        sandbox = self.settings.sandbox
        after = self.before_command()
        assert isinstance(before, Counters)
        notes: list[str] = []
        clean_up = False
        # RLIMIT_NPROC (same number) may refuse the fork before the cgroup counts it.
        if after.pids_max > before.pids_max or _NO_FORK in output:
            notes.append(f"[the sandbox reached its limit of {sandbox.pids} processes (SANDBOX_PIDS): "
                         "its processes were stopped; the shell and its cwd are kept]")
            clean_up = True
        if after.oom_kills > before.oom_kills:
            notes.append(f"[the sandbox reached its memory limit of {sandbox.memory_mb} MB (SANDBOX_MEMORY_MB): "
                         "the kernel killed a process; use less memory]")
        if _FULL_DISK in output or b"File size limit exceeded" in output:
            notes.append(f"[a disk limit was reached: /workspace holds {sandbox.disk_mb} MB (SANDBOX_DISK_MB), "
                         f"/tmp {sandbox.tmp_mb} MB (SANDBOX_TMP_MB); delete files to go on]")
        return "\n".join(notes), clean_up

    # -- mounts --------------------------------------------------------------------------

    def mount_bucket(self, spec: MountSpec) -> list[str]:
        """Mount the user's skills at /workspace/.claude/skills, verify it, return the paths seen."""
        self._alive()
        # A new setup replaces the mount (with fresh credentials): s3fs refuses a mountpoint that
        # is still in use, and files must never be reloaded through a stale mount.
        self._unmount()
        if spec.kind == "bind":
            source = Path(spec.source_dir or "")
            if not spec.source_dir or not source.is_dir():
                raise MountError(f"Cannot bind {spec.source_dir!r}: no such folder.")
            self._set_claude_source(source.resolve())
        else:
            self._set_claude_source(self._mount_s3(spec))
        self._restart_bash()
        seen = self._verify_mount(spec.expect)
        return seen

    def _set_claude_source(self, source: Path | None) -> None:
        if self._claude_tree is not None:
            self._claude_tree.close()
            self._claude_tree = None
        self.claude_source = source
        if source is not None:
            self._claude_tree = paths.DirTree.open(str(source))

    def _verify_mount(self, expect: tuple[str, ...] = ()) -> list[str]:
        """The mount's files as the agent will see them, read back *through the sandbox*.

        With `expect` (what storage lists), one listed file must be readable there; the rest is
        taken from the listing, so setup costs the same at any skill count. Without it, the
        mount is walked and must show something.
        """
        if expect:
            probe = f"{MOUNT_DIR}/{expect[0]}"
            result = self.exec(f"test -f {shlex.quote(probe)} && test -r {shlex.quote(probe)} && echo visible", timeout=30)
            if result.exit_code != 0 or "visible" not in result.stdout:
                self._unmount()
                raise MountError(f"The mount at {MOUNT_DIR} does not show {probe}, which storage lists; it is not used.")
            return sorted(f"{MOUNT_DIR}/{rel}" for rel in expect)
        result = self.exec(f"find {MOUNT_DIR} -mindepth 1 -maxdepth 4 -type f 2>&1 | head -n 2000", timeout=30)
        seen = [line for line in result.stdout.splitlines() if line.startswith(MOUNT_DIR + "/")]
        if result.exit_code != 0 or not seen:
            self._unmount()
            raise MountError(
                f"The mount at {MOUNT_DIR} shows nothing (exit {result.exit_code}: {result.stdout.strip()[:300]}); "
                "it is not used."
            )
        return sorted(seen)

    def _mount_s3(self, spec: MountSpec) -> Path:
        if not shutil.which("s3fs") or not os.path.exists("/dev/fuse"):
            raise MountError("s3fs or /dev/fuse is not available on this host.")
        if not (spec.bucket and spec.prefix and spec.access_key_id and spec.secret_access_key):
            raise MountError("An s3 mount needs bucket, prefix and credentials.")
        mountpoint = self.root / "claude-mount"
        mountpoint.mkdir(mode=0o700, exist_ok=True)
        # The credentials live outside the workspace, readable by the server only.
        passwd = self.root / "s3fs.passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{spec.access_key_id.get_secret_value()}:{spec.secret_access_key.get_secret_value()}\n")
        # The files show as the session's uid (0700), so only this sandbox can use them.
        who = f"uid={self.uid},gid={self.uid},umask=077" if self.uid is not None else "mp_umask=022"
        options = [f"passwd_file={passwd}", "use_path_request_style", "retries=2", "connect_timeout=5",
                   "readwrite_timeout=20", "stat_cache_expire=1", "allow_other", who, "nosuid", "nodev",
                   # s3fs HEADs every file it lists, 20 at a time by default: 100 skills were 5
                   # sequential round trips on setup's critical path, now 1.
                   "multireq_max=200"]
        if spec.endpoint_url:
            options.append(f"url={spec.endpoint_url}")
        if spec.region and spec.region != "us-east-1":
            options.append(f"endpoint={spec.region}")
        s3fs_env = {"PATH": os.environ.get("PATH", SANDBOX_PATH)}
        if spec.session_token is not None:
            # s3fs takes a session token from its environment (or an AWS credentials file), never
            # from a passwd file: temporary credentials go to it that way, and nowhere on disk.
            passwd.unlink()
            options = [o for o in options if not o.startswith("passwd_file=")] + ["use_session_token"]
            s3fs_env |= {"AWS_ACCESS_KEY_ID": spec.access_key_id.get_secret_value(),
                         "AWS_SECRET_ACCESS_KEY": spec.secret_access_key.get_secret_value(),
                         "AWS_SESSION_TOKEN": spec.session_token.get_secret_value()}
        target = f"{spec.bucket}:/{spec.prefix.strip('/')}"
        proc = subprocess.run(["s3fs", target, str(mountpoint), "-o", ",".join(options)],
                              capture_output=True, text=True, timeout=30, check=False, env=s3fs_env)
        if proc.returncode != 0:
            raise MountError(f"s3fs failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[:300]}")
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not os.path.ismount(mountpoint):
            raise MountError("s3fs started but nothing was mounted within 10 s.")
        self._s3fs_mountpoint = mountpoint
        return mountpoint

    def _unmount(self) -> None:
        self._set_claude_source(None)
        if self._s3fs_mountpoint is not None:
            try:
                linux.umount_lazy(self._here(self._s3fs_mountpoint.name))
            except OSError as exc:
                log.warning("could not unmount %s: %s", self._s3fs_mountpoint, exc)
            self._s3fs_mountpoint = None
        (self.root / "s3fs.passwd").unlink(missing_ok=True)

    # -- lifecycle -----------------------------------------------------------------------

    def _restart_bash(self) -> None:
        with self._lock:
            if self._bash is not None:
                self._bash.close()
                self._bash = None

    def destroy(self) -> None:
        """Stop every process, unmount, delete the workspace, give the uid back."""
        with self._lock:
            if self._bash is not None:
                self._bash.close()
                self._bash = None
            self.destroyed = True
        self._teardown()

    def _teardown(self) -> None:
        if self.network is not None:
            if self.provider.egress is not None:
                self.provider.egress.detach(self.session_id)
            self.network.close()
            self.network = None
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        self.close_snapshot_watch()
        if getattr(self, "files", None) is not None:
            self.files.close()
        self._unmount()
        if self.disk_limited:
            try:
                linux.umount_lazy(self._here("workspace"))
            except OSError as exc:
                log.warning("could not unmount %s: %s", self.workspace, exc)
        _remove_quietly(self.root)
        root_fd = getattr(self, "_root_fd", None)
        if root_fd is not None:
            os.close(root_fd)
            self._root_fd = None
        if self.uid is not None and self.provider.uids is not None:
            self.provider.uids.release(self.uid)
            self.uid = None

    def _here(self, name: str) -> str:
        """A path to `name` in the session folder that holds even if the folder was renamed."""
        fd = getattr(self, "_root_fd", None)
        return f"/proc/self/fd/{fd}/{name}" if fd is not None else str(self.root / name)

    def intact(self) -> bool:
        """Whether the workspace is still the folder this sandbox made (not deleted or replaced underneath)."""
        try:
            now = os.stat(self.workspace, follow_symlinks=False)
        except OSError:
            return False
        return not self.files.vanished() and (now.st_dev, now.st_ino) == (self._identity.st_dev, self._identity.st_ino)

    def _alive(self) -> None:
        if self.destroyed:
            raise SandboxGone(f"Sandbox {self.session_id} was destroyed: set the session up again.")
        if not self.intact():
            # Deleted underneath: nothing here works any more; the provider's next create destroys
            # what is left and makes a new one (the turn layer reports sandbox_recreated).
            raise SandboxGone(f"The workspace of sandbox {self.session_id} was deleted: set the session up again.")


class LocalSandboxProvider:
    """Sandboxes of this process, by session id."""

    def __init__(self, settings: Settings, *, egress_guard: AddressGuard | None = None) -> None:
        """`egress_guard` replaces the proxy's address check: tests exempt their loopback upstreams with it."""
        self.settings = settings
        self.bwrap = shutil.which("bwrap") or "bwrap"
        self.isolated = shutil.which("bwrap") is not None
        if not self.isolated:
            if settings.is_production or not settings.sandbox.allow_unisolated:
                raise IsolationUnavailable(
                    "bubblewrap (bwrap) is not installed, so sessions cannot be isolated. Install the Debian "
                    "package: apt-get install bubblewrap. In development only, SANDBOX_ALLOW_UNISOLATED=1 runs "
                    "commands without isolation."
                )
            log.warning(
                "!!! SANDBOX_ALLOW_UNISOLATED=1 and bwrap is missing: agent commands run WITHOUT isolation, "
                "as this server's user, on this machine. Install bubblewrap. !!!"
            )
        self.kind = "bwrap" if self.isolated else "unisolated"
        self.root = settings.sandbox.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        data_dir = settings.storage.data_dir.resolve()
        if data_dir in self.root.parents and data_dir.is_dir():
            os.chmod(data_dir, 0o700)
        self._sandboxes: dict[str, LocalSandbox] = {}
        self._last_used: dict[str, float] = {}  # time.monotonic() of the last create/get, for an idle reaper
        self._lock = threading.Lock()
        # Workspaces are mounts and uids are host-wide records: give them back when the process
        # ends without destroying its sessions (a stopped ./scripts/dev, a finished test run).
        weakref.finalize(self, _destroy_all, self._sandboxes)
        privileged = self.isolated and os.geteuid() == 0
        self.stage = _make_stage() if privileged else None
        self.uids = _uid_allocator(self.root) if self.stage is not None else None
        self.cgroups = Cgroups() if self.stage is not None else None
        if self.cgroups is not None and self.cgroups.version is None:
            self.cgroups = None
        self.can_disable_userns = self.isolated and "--disable-userns" in _bwrap_help(self.bwrap)
        self.layout = HostLayout.read()
        # A network namespace per sandbox needs root; without it network-on sandboxes get none.
        self.egress = EgressProxy(
            operator_allow=settings.sandbox.egress_allow, operator_deny=settings.sandbox.egress_deny,
            max_connections=settings.sandbox.egress_max_connections, guard=egress_guard,
        ) if self.stage is not None else None
        if self.egress is not None:
            weakref.finalize(self, self.egress.close)
        if self.uids is not None:
            self._sweep()
        if self.isolated:
            self._probe()

    def _sweep(self) -> None:
        """Give back what a run that crashed (or was killed) left, and have what this run leaves
        given back when it ends (chalicelib.sandbox.leftovers)."""
        assert self.uids is not None
        sweep_leftovers(self.root, self.uids, self.cgroups)
        leftovers.watch_root(self.root, self.uids.folder)

    def _probe(self) -> None:
        """Fail now, not at the first command, when bwrap is installed but cannot work here.

        bwrap must create namespaces, which a container forbids unless it was given
        CAP_SYS_ADMIN: the sandbox host would start, and then every command would fail.
        The probe is a whole sandbox (uid, tmpfs, cgroup), so it checks every part.
        """
        detail = ""
        try:
            probe = LocalSandbox(f"probe-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                                 self.root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}", self, SandboxOptions())
        except (OSError, SandboxError) as exc:
            raise IsolationUnavailable(f"The sandbox's folders, uid or limits cannot be set up here: {exc}.") from None
        try:
            launch = probe.launch(["/bin/true"])
            done = subprocess.run(launch.argv, capture_output=True, text=True, timeout=30, env={}, check=False,
                                  preexec_fn=launch.preexec)
            if done.returncode == 0:
                return
            detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        except (OSError, subprocess.SubprocessError) as exc:
            detail = str(exc)
        finally:
            probe.destroy()
        raise IsolationUnavailable(
            f"bubblewrap is installed but cannot create a sandbox here: {detail}. It needs to create "
            "namespaces: in a container, give it CAP_SYS_ADMIN (docker run --cap-add SYS_ADMIN --security-opt "
            "apparmor=unconfined; on ECS, linuxParameters.capabilities.add). Run as root, each session's bwrap "
            "starts as its own unprivileged uid with --unshare-user, so unprivileged user namespaces must be "
            "allowed too (user.max_user_namespaces > 0; kernel.unprivileged_userns_clone=1 where that exists; no "
            "AppArmor userns restriction). Where the platform allows neither, sessions cannot be isolated there."
        )

    def create(self, session_id: str, options: SandboxOptions, placement: Placement | None = None) -> LocalSandbox:
        """Create the sandbox, or return the existing one with the new options applied (one host:
        `placement` does not apply)."""
        validate_id(session_id, "sessionId")
        with self._lock:
            self._last_used[session_id] = time.monotonic()
            existing = self._sandboxes.get(session_id)
            if existing is not None and not existing.destroyed:
                try:
                    existing._alive()
                except SandboxGone:
                    existing.destroy()  # its workspace vanished: start over
                else:
                    existing.set_options(options)
                    return existing
            root = self.root / session_id
            if root.exists() or root.is_symlink():
                _clear_leftover(root)
            sandbox = LocalSandbox(session_id, root, self, options)
            self._sandboxes[session_id] = sandbox
            return sandbox

    def get(self, session_id: str) -> LocalSandbox:
        with self._lock:
            sandbox = self._sandboxes.get(session_id)
            if sandbox is not None:
                self._last_used[session_id] = time.monotonic()
        if sandbox is None or sandbox.destroyed:
            raise SandboxGone(f"Session {session_id!r} has no sandbox here: call POST /setup/{session_id} again.")
        sandbox._alive()  # its workspace deleted or replaced underneath: SandboxGone
        return sandbox

    def destroy(self, session_id: str) -> bool:
        with self._lock:
            sandbox = self._sandboxes.pop(session_id, None)
            self._last_used.pop(session_id, None)
        if sandbox is None:
            return False
        sandbox.destroy()
        return True

    def supports_mount(self, spec: MountSpec) -> bool:
        if spec.kind == "bind":
            return True
        return bool(shutil.which("s3fs")) and os.path.exists("/dev/fuse") and os.geteuid() == 0

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sandboxes)

    def last_used(self, session_id: str) -> float | None:
        """time.monotonic() when the session was last set up or fetched (a turn fetches it), or None."""
        with self._lock:
            return self._last_used.get(session_id)


    def limits(self) -> dict[str, str]:
        """Each whole-sandbox limit and what enforces it here."""
        sandbox = self.settings.sandbox
        if not self.isolated:
            return {"isolation": "none (SANDBOX_ALLOW_UNISOLATED)", "cpu": f"RLIMIT_CPU {sandbox.cpu_seconds} s per process",
                    "memory": f"RLIMIT_AS {sandbox.memory_mb} MB per process", "pids": "none", "disk": "none", "tmp": "none",
                    "uid": "the server's own"}
        cg = self.cgroups.version if self.cgroups is not None else None
        per_uid = self.uids is not None
        return {
            "uid": (f"one unprivileged uid per session (from {self.uids.base}) in a user namespace" if self.uids is not None
                    else "the server's uid, in a user namespace"),
            "pids": (f"cgroup {cg} pids.max {sandbox.pids}" if cg
                     else f"RLIMIT_NPROC {sandbox.pids} on the session's uid" if per_uid else "none"),
            "memory": (f"cgroup {cg} {sandbox.memory_mb} MB for the whole sandbox; RLIMIT_AS {sandbox.memory_mb} MB per process"
                       if cg else f"RLIMIT_AS {sandbox.memory_mb} MB per process only"),
            "disk": (f"tmpfs size={sandbox.disk_mb}m,nosuid,nodev" if per_uid
                     else f"none (RLIMIT_FSIZE {sandbox.disk_mb} MB per file)"),
            "tmp": f"tmpfs size={sandbox.tmp_mb}m",
            "cpu": f"RLIMIT_CPU {sandbox.cpu_seconds} s per process",
            "network": self.network_mechanism(),
        }

    def network_mechanism(self) -> str:
        """What a network-on sandbox can reach here, and what enforces it."""
        if self.egress is None:
            return "none: network-on sandboxes get --unshare-net too (their own namespace needs root)"
        sandbox = self.settings.sandbox
        rules = "".join([f"; SANDBOX_EGRESS_ALLOW {','.join(sandbox.egress_allow)}" if sandbox.egress_allow else "",
                         f"; SANDBOX_EGRESS_DENY {','.join(sandbox.egress_deny)}" if sandbox.egress_deny else ""])
        return ("network namespace per sandbox with loopback only; egress through the host's proxy (HTTP CONNECT and "
                "HTTP at 127.0.0.1:3128, SOCKS5 at 127.0.0.1:1080) that resolves names itself and refuses loopback, "
                "link-local and metadata, RFC 1918, CGNAT, ULA, multicast and this host's addresses; "
                f"{sandbox.egress_max_connections} connections per sandbox{rules}")


def _destroy_all(sandboxes: dict[str, LocalSandbox]) -> None:
    for sandbox in list(sandboxes.values()):
        try:
            sandbox.destroy()
        except Exception:
            log.exception("could not destroy sandbox %s", sandbox.session_id)
    sandboxes.clear()


def _join(base: str, rel: str) -> str:
    return base if rel in ("", ".") else f"{base}/{rel}"


def _uid_allocator(root: Path) -> UidAllocator:
    """The host-wide uid record; under SANDBOX_ROOT where /var/lib cannot be written (a read-only
    image), which is safe only as long as one server uses the machine's sandbox uids."""
    try:
        return UidAllocator()
    except OSError as exc:
        log.warning("cannot keep sandbox uids in %s (%s): using %s, which only this SANDBOX_ROOT's servers share",
                    DEFAULT_UID_DIR, exc.strerror or exc, root / ".uids")
        return UidAllocator(root / ".uids")


def _make_stage() -> Path | None:
    """The stage folder (root's, 0755, empty subfolders), or None where none can be made safely."""
    for stage in _STAGE_CANDIDATES:
        try:
            stage.mkdir(parents=True, exist_ok=True, mode=0o755)
            info = os.lstat(stage)
            # In /tmp another user could have made it first: use it only if it is root's own folder.
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
                raise PermissionError(f"{stage} is not a root-owned folder closed to others")
            for name in ("workspace", "skills"):
                (stage / name).mkdir(mode=0o755, exist_ok=True)
            return stage
        except OSError as exc:
            log.warning("cannot use %s as the sandbox stage: %s", stage, exc)
    return None


def _bwrap_help(bwrap: str) -> str:
    try:
        return subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def sweep_leftovers(root: Path, uids: UidAllocator, cgroups: Cgroups | None) -> None:
    """Give back what a run that crashed (or was killed) left: tmpfs workspaces under `root` and
    session cgroups whose uid no live process holds any more."""

    def in_use(name: str) -> bool:
        suffix = name.rsplit("-", 1)[-1]
        return suffix.isdigit() and uids.is_held(int(suffix))

    if cgroups is not None:
        cgroups.sweep(in_use)
    for session in root.iterdir():
        workspace = session / "workspace"
        try:
            if not session.name.startswith(".") and os.path.ismount(workspace) and not uids.is_held(os.stat(workspace).st_uid):
                _clear_leftover(session)
        except OSError as exc:
            log.warning("could not clear the leftover sandbox %s: %s", session, exc)


def _clear_leftover(root: Path) -> None:
    """A session folder left by a crashed run: unmount its workspace, then delete it."""
    if root.is_symlink():
        root.unlink()
        return
    try:
        linux.umount_lazy(str(root / "workspace"))
        linux.umount_lazy(str(root / "claude-mount"))
    except OSError:
        pass
    _remove_quietly(root)


def _remove_quietly(folder: Path) -> None:
    """Remove a session folder whatever the agent left in it (any depth); failures are logged."""
    try:
        paths.remove_path(str(folder))
    except (OSError, SandboxError) as exc:
        log.warning("could not remove %s: %s", folder, exc)
