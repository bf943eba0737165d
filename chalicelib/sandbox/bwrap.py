"""Local sandboxes on bubblewrap: one isolated /workspace per session.

Every command runs under `bwrap` with a read-only system, only /workspace (and a private /tmp)
writable, no network unless the user's settings allow it, its own pid namespace and /proc,
a cleared environment (no API keys, AWS or R2 credentials), and CPU-time and memory limits.
The user's storage prefix can be mounted at /workspace/.claude (a bind mount of the embedded
store, or s3fs for S3/R2); the mount is verified and never reported as working when it is not.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from chalicelib.config import Settings
from chalicelib.ids import validate_id
from chalicelib.sandbox import paths
from chalicelib.sandbox.archive import WorkspaceArchiveMixin
from chalicelib.sandbox.base import (
    CLAUDE_DIR,
    WORKSPACE,
    ExecResult,
    FileEntry,
    IsolationUnavailable,
    MountError,
    MountSpec,
    SandboxFileNotFound,
    SandboxGone,
    SandboxOptions,
    SandboxPathError,
)
from chalicelib.sandbox.process import descendants, kill_group, run_capped

log = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Only what programs need from /etc; /etc/shadow and friends stay out.
_ETC_FILES = (
    "passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "localtime", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates", "alternatives", "mime.types", "bash.bashrc",
    "inputrc", "profile", "python3", "python3.11",
)
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
STATE_DIR = "/run/sandbox"  # per-session state of the bash tool, bound read-write


class LocalSandbox(WorkspaceArchiveMixin):
    """One session's workspace on this machine."""

    def __init__(self, session_id: str, root: Path, settings: Settings, options: SandboxOptions, isolated: bool) -> None:
        self.session_id = session_id
        self.root = root
        self.workspace = root / "workspace"
        self.state_dir = root / "state"
        self.settings = settings
        self.options = options
        self.isolated = isolated
        self.claude_source: Path | None = None
        self._s3fs_mountpoint: Path | None = None
        self._bash: BashSession | None = None
        self._lock = threading.Lock()
        self.destroyed = False
        for folder in (self.workspace, self.state_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -- files ---------------------------------------------------------------------------

    def _host(self, path: str) -> Path:
        self._alive()
        return paths.host_path(self.workspace, path, self.claude_source)

    def write_file(self, path: str, content: bytes | str) -> None:
        """Create or replace a file; parents are created."""
        self.write_files({path: content})

    def write_files(self, files: dict[str, bytes | str]) -> None:
        """Write many files in one pass: every path is checked before anything is written.

        Each folder is created and re-checked once, not once per file. The writes are local
        syscalls bound by path checks under the GIL, so threads only add contention:
        100 files take 23 ms in one thread and 68 ms in 16 here. (The remote client sends
        the whole batch in one request.)
        """
        targets = {path: self._host(path) for path in files}
        for path, target in targets.items():
            if target in (self.workspace, self.claude_source):
                raise SandboxPathError(f"{path!r} is a folder.")
        checked: set[Path] = set()
        for path, target in targets.items():
            if target.parent not in checked:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._host(path)  # re-check now that parents exist
                checked.add(target.parent)
        for path, target in targets.items():
            content = files[path]
            data = content.encode() if isinstance(content, str) else content
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)

    def read_file(self, path: str) -> bytes:
        target = self._host(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            raise SandboxFileNotFound(f"No file at {path}.") from None
        except IsADirectoryError:
            raise SandboxPathError(f"{path} is a folder, not a file.") from None
        except OSError as exc:
            raise SandboxPathError(f"Cannot read {path}: {exc.strerror}.") from None
        with os.fdopen(fd, "rb") as handle:
            try:
                return handle.read()
            except IsADirectoryError:
                raise SandboxPathError(f"{path} is a folder, not a file.") from None

    def list_files(self, path: str = WORKSPACE, *, recursive: bool = True) -> list[FileEntry]:
        target = self._host(path)
        if not target.exists():
            raise SandboxFileNotFound(f"No folder at {path}.")
        entries: list[FileEntry] = []
        if target.is_file():
            return [FileEntry(path=self._sandbox_path(target), size=target.stat().st_size, is_dir=False)]
        for dirpath, dirnames, filenames in os.walk(target, followlinks=False):
            here = Path(dirpath)
            for name in sorted(dirnames):
                entries.append(FileEntry(path=self._sandbox_path(here / name), size=0, is_dir=True))
            for name in sorted(filenames):
                full = here / name
                size = full.lstat().st_size
                entries.append(FileEntry(path=self._sandbox_path(full), size=size, is_dir=False))
            if not recursive:
                break
            # A bind/s3fs source seen at .claude is walked separately from the workspace.
            if here == self.workspace and self.claude_source is not None:
                dirnames[:] = [d for d in dirnames if d != ".claude"]
        if target == self.workspace and self.claude_source is not None and recursive:
            entries.append(FileEntry(path=CLAUDE_DIR, size=0, is_dir=True))
            entries += self.list_files(CLAUDE_DIR)
        return sorted(entries, key=lambda e: e.path)

    def _sandbox_path(self, host: Path) -> str:
        return paths.sandbox_path(self.workspace, host, self.claude_source)

    def delete_file(self, path: str) -> None:
        target = self._host(path)
        if target in (self.workspace, self.claude_source):
            for child in target.iterdir():
                _remove(child)
            return
        _remove(target)

    # -- commands ------------------------------------------------------------------------

    def command(self, argv: list[str], *, network: bool | None = None) -> list[str]:
        """The full argv that runs `argv` inside this sandbox."""
        if not self.isolated:
            return argv
        allow_network = self.options.allow_network if network is None else network
        # Run as root, bwrap keeps every capability unless told otherwise: with CAP_SYS_ADMIN and
        # CAP_MKNOD a command could make a device node for the host's disk and mount it.
        # By full path: the sandboxed environment is empty, so the child's PATH cannot find it.
        cmd = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--unshare-pid", "--unshare-ipc",
               "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for name in _MERGED_USR:
            source = Path("/") / name
            if source.is_symlink():
                cmd += ["--symlink", os.readlink(source), f"/{name}"]
            elif source.is_dir():
                cmd += ["--ro-bind", str(source), f"/{name}"]
        for name in _ETC_FILES:
            if (Path("/etc") / name).exists():
                cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/run",
                "--bind", str(self.workspace), WORKSPACE, "--bind", str(self.state_dir), STATE_DIR]
        if self.claude_source is not None:
            cmd += ["--bind", str(self.claude_source), CLAUDE_DIR]
        if not allow_network:
            cmd.append("--unshare-net")
        # bwrap builds the root on a tmpfs; make it read-only so only the binds above are writable.
        cmd += ["--remount-ro", "/", "--clearenv", "--chdir", WORKSPACE]
        for key, value in self.environment().items():
            cmd += ["--setenv", key, value]
        return cmd + ["--", *argv]

    def environment(self) -> dict[str, str]:
        """The only environment a sandboxed process gets: nothing from the server."""
        home = WORKSPACE if self.isolated else str(self.workspace)
        return {"HOME": home, "PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "TERM": "dumb", "USER": "sandbox", "PWD": home}

    def limits(self) -> Callable[[], None]:
        """A preexec function applying the CPU-time and memory limits."""
        cpu = self.settings.sandbox.cpu_seconds
        memory = self.settings.sandbox.memory_mb * 1024 * 1024

        def apply() -> None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))

        return apply

    def exec(self, command: str, *, timeout: float | None = None, max_output: int = 100_000) -> ExecResult:
        """Run `command` with /bin/sh -c in /workspace."""
        self._alive()
        return run_capped(
            self.command(["/bin/sh", "-c", command]),
            timeout=timeout or self.settings.sandbox.command_timeout_seconds,
            max_output=max_output,
            env=self.environment() if not self.isolated else {},
            cwd=None if self.isolated else str(self.workspace),
            preexec=self.limits(),
        )

    def bash(self) -> BashSession:
        with self._lock:
            self._alive()
            if self._bash is None:
                self._bash = BashSession(self)
            return self._bash

    # -- mounts --------------------------------------------------------------------------

    def mount_bucket(self, spec: MountSpec) -> list[str]:
        """Mount the user's prefix at /workspace/.claude, verify it, return the paths seen."""
        self._alive()
        if spec.kind == "bind":
            source = Path(spec.source_dir or "")
            if not spec.source_dir or not source.is_dir():
                raise MountError(f"Cannot bind {spec.source_dir!r}: no such folder.")
            self.claude_source = source.resolve()
        else:
            self.claude_source = self._mount_s3(spec)
        self._restart_bash()
        seen = self._verify_mount()
        return seen

    def _verify_mount(self) -> list[str]:
        # Read the listing back *through the sandbox*, as the agent will see it.
        result = self.exec(f"find {CLAUDE_DIR} -mindepth 1 -maxdepth 4 -type f 2>&1 | head -n 2000", timeout=30)
        seen = [line for line in result.stdout.splitlines() if line.startswith(CLAUDE_DIR + "/")]
        if result.exit_code != 0 or not seen:
            self._unmount()
            raise MountError(
                f"The mount at {CLAUDE_DIR} shows nothing (exit {result.exit_code}: {result.stdout.strip()[:300]}); "
                "it is not used."
            )
        return sorted(seen)

    def _mount_s3(self, spec: MountSpec) -> Path:
        if not shutil.which("s3fs") or not os.path.exists("/dev/fuse"):
            raise MountError("s3fs or /dev/fuse is not available on this host.")
        if not (spec.bucket and spec.prefix and spec.access_key_id and spec.secret_access_key):
            raise MountError("An s3 mount needs bucket, prefix and credentials.")
        mountpoint = self.root / "claude-mount"
        mountpoint.mkdir(exist_ok=True)
        # The credentials live outside the workspace, readable by the server only.
        passwd = self.root / "s3fs.passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{spec.access_key_id.get_secret_value()}:{spec.secret_access_key.get_secret_value()}\n")
        options = [f"passwd_file={passwd}", "use_path_request_style", "retries=2", "connect_timeout=5",
                   "readwrite_timeout=20", "stat_cache_expire=1", "allow_other", "mp_umask=022"]
        if spec.endpoint_url:
            options.append(f"url={spec.endpoint_url}")
        if spec.region and spec.region != "us-east-1":
            options.append(f"endpoint={spec.region}")
        target = f"{spec.bucket}:/{spec.prefix.strip('/')}"
        proc = subprocess.run(["s3fs", target, str(mountpoint), "-o", ",".join(options)],
                              capture_output=True, text=True, timeout=30, env={"PATH": os.environ.get("PATH", SANDBOX_PATH)})
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
        self.claude_source = None
        if self._s3fs_mountpoint is not None:
            subprocess.run(["umount", "-l", str(self._s3fs_mountpoint)], capture_output=True, timeout=30)
            self._s3fs_mountpoint = None
        (self.root / "s3fs.passwd").unlink(missing_ok=True)

    # -- lifecycle -----------------------------------------------------------------------

    def _restart_bash(self) -> None:
        with self._lock:
            if self._bash is not None:
                self._bash.close()
                self._bash = None

    def destroy(self) -> None:
        """Stop every process, unmount, delete the workspace."""
        with self._lock:
            if self._bash is not None:
                self._bash.close()
                self._bash = None
            self.destroyed = True
        self._unmount()
        shutil.rmtree(self.root, ignore_errors=True)

    def _alive(self) -> None:
        if self.destroyed:
            raise SandboxGone(f"Sandbox {self.session_id} was destroyed: set the session up again.")


class BashSession:
    """A persistent bash inside the sandbox for the agent's bash tool.

    Each command is written to a file and `source`d by the long-lived shell, so `cd` and
    `export` carry over. After every command the shell saves its cwd and exported variables;
    a command that hangs past its timeout is killed (its processes; or, for a shell builtin
    loop, the whole shell, which is restarted from the saved cwd and variables).
    """

    def __init__(self, sandbox: LocalSandbox) -> None:
        self.sandbox = sandbox
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._start()

    def _state(self, name: str) -> Path:
        return self.sandbox.state_dir / name

    def _inside(self, name: str) -> str:
        return f"{STATE_DIR}/{name}" if self.sandbox.isolated else str(self._state(name))

    def _start(self) -> None:
        boot = self._state("boot.sh")
        boot.write_text(
            "cd \"$(cat {cwd} 2>/dev/null || echo $HOME)\" 2>/dev/null || cd\n"
            "[ -f {env} ] && . {env} 2>/dev/null\n".format(cwd=self._inside("cwd"), env=self._inside("env"))
        )
        self._buffer = bytearray()
        self._proc = subprocess.Popen(
            self.sandbox.command(["/bin/bash", "--noprofile", "--norc", "-s"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self.sandbox.environment() if not self.sandbox.isolated else {},
            cwd=None if self.sandbox.isolated else str(self.sandbox.workspace),
            start_new_session=True, preexec_fn=self.sandbox.limits(),
        )
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        self._send(f". {self._inside('boot.sh')}\n")

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                self._buffer += chunk
                self._cond.notify_all()

    def _send(self, text: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def run(self, command: str, *, timeout: float | None = None, max_output: int = 30_000) -> ExecResult:
        """Run one command in the shell; kill it at `timeout`, keeping the session."""
        timeout = timeout or self.sandbox.settings.sandbox.command_timeout_seconds
        with self._lock:
            self.sandbox._alive()
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            marker = f"__SANDBOX_DONE_{uuid.uuid4().hex}__"
            self._state("cmd.sh").write_text(command + "\n")
            started = time.monotonic()
            with self._cond:
                self._buffer = bytearray()
            self._send(
                f"{{ . {self._inside('cmd.sh')} ; }} < /dev/null 2>&1; __rc=$?; "
                f"pwd > {self._inside('cwd')}; export -p > {self._inside('env')}; "
                f"printf '\\n{marker} %d\\n' \"$__rc\"\n"
            )
            output, code = self._wait(marker, started + timeout)
            timed_out = code is None
            if timed_out:
                self._kill_command()
                output, code = self._wait(marker, time.monotonic() + 3)
                if code is None:
                    # A builtin loop holds the shell itself: restart it from the saved state.
                    self.close()
                    self._start()
                code = 124
            data = output
            truncated = len(data) > max_output
            text = data[:max_output].decode("utf-8", "replace")
            if timed_out:
                text += f"\n[killed after {timeout:g}s timeout; the shell session and its cwd are kept]"
            return ExecResult(
                exit_code=code, stdout=text, stderr="", stdout_truncated=truncated, timed_out=timed_out,
                duration_ms=int((time.monotonic() - started) * 1000),
            )

    def _wait(self, marker: str, deadline: float) -> tuple[bytes, int | None]:
        token = ("\n" + marker + " ").encode()
        with self._cond:
            while True:
                index = self._buffer.find(token)
                if index >= 0:
                    end = self._buffer.find(b"\n", index + len(token))
                    if end >= 0:
                        code = int(self._buffer[index + len(token):end])
                        return bytes(self._buffer[:index]), code
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._proc is None or (self._proc.poll() is not None and token not in self._buffer):
                    return bytes(self._buffer), None
                self._cond.wait(min(remaining, 0.5))

    def _kill_command(self) -> None:
        """Kill what the shell is running, not the shell."""
        if self._proc is None:
            return
        tree = descendants(self._proc.pid)
        shell = next((pid for pid in tree if _comm(pid) == "bash"), None)
        if shell is None:
            return
        for pid in reversed(descendants(shell)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def restart(self) -> None:
        """A fresh shell: cwd back to /workspace, exported variables forgotten."""
        with self._lock:
            self.close()
            self._state("cwd").unlink(missing_ok=True)
            self._state("env").unlink(missing_ok=True)
            self._start()

    def close(self) -> None:
        if self._proc is not None:
            kill_group(self._proc)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None


class LocalSandboxProvider:
    """Sandboxes of this process, by session id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        self._sandboxes: dict[str, LocalSandbox] = {}
        self._lock = threading.Lock()
        if self.isolated:
            self._probe()

    def _probe(self) -> None:
        """Fail now, not at the first command, when bwrap is installed but cannot work here.

        bwrap must create namespaces, which a container forbids unless it was given
        CAP_SYS_ADMIN: the sandbox host would start, and then every command would fail.
        """
        probe = LocalSandbox("probe", self.root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}", self.settings,
                             SandboxOptions(), isolated=True)
        try:
            done = subprocess.run(probe.command(["/bin/true"]), capture_output=True, text=True, timeout=30, env={})
            if done.returncode == 0:
                return
            detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = str(exc)
        finally:
            shutil.rmtree(probe.root, ignore_errors=True)
        raise IsolationUnavailable(
            f"bubblewrap is installed but cannot create a sandbox here: {detail}. It needs to create "
            "namespaces: in a container, give it CAP_SYS_ADMIN (docker run --cap-add SYS_ADMIN --security-opt "
            "apparmor=unconfined; on ECS, linuxParameters.capabilities.add). Where the platform allows neither "
            "that nor user namespaces, sessions cannot be isolated there."
        )

    def create(self, session_id: str, options: SandboxOptions) -> LocalSandbox:
        """Create the sandbox, or return the existing one with the new options applied."""
        validate_id(session_id, "sessionId")
        with self._lock:
            existing = self._sandboxes.get(session_id)
            if existing is not None and not existing.destroyed:
                if existing.options != options:
                    existing.options = options
                    existing._restart_bash()
                return existing
            sandbox = LocalSandbox(session_id, self.root / session_id, self.settings, options, self.isolated)
            self._sandboxes[session_id] = sandbox
            return sandbox

    def get(self, session_id: str) -> LocalSandbox:
        with self._lock:
            sandbox = self._sandboxes.get(session_id)
        if sandbox is None or sandbox.destroyed:
            raise SandboxGone(f"Session {session_id!r} has no sandbox here: call POST /setup/{session_id} again.")
        return sandbox

    def destroy(self, session_id: str) -> bool:
        with self._lock:
            sandbox = self._sandboxes.pop(session_id, None)
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


def _remove(target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink(missing_ok=True)
    elif target.is_dir():
        shutil.rmtree(target, ignore_errors=True)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""
