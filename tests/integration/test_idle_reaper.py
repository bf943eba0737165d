"""Local sandboxes are destroyed when idle (SANDBOX_IDLE_TIMEOUT), shell and workspace included."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxGone, SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider
from chalicelib.sandbox.process import descendants
from devserver.reaper import IdleReaper

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_idle_sessions_are_destroyed_and_used_ones_kept(tmp_path: Path) -> None:
    provider = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sb"), "DATA_DIR": str(tmp_path)}))
    reaper = IdleReaper(lambda: provider, idle_seconds=0.5)
    idle = provider.create("idle-1", SandboxOptions())
    busy = provider.create("busy-1", SandboxOptions())
    assert idle.bash().run("echo $$").exit_code == 0
    launcher = idle.bash()._proc  # the bwrap launcher of the session's shell; the shell runs below it
    assert launcher is not None
    shell_pids = [launcher.pid, *descendants(launcher.pid)]
    assert shell_pids, "the idle session's shell should be running"
    time.sleep(0.7)
    provider.get("busy-1")  # a turn fetched it just now
    assert reaper.reap_once() == ["idle-1"]
    assert provider.sessions() == ["busy-1"]
    with pytest.raises(SandboxGone):
        provider.get("idle-1")
    assert not (tmp_path / "sb" / "idle-1").exists()
    deadline = time.monotonic() + 15  # killed at once; under load the kernel may take a moment to reap them
    while any(_alive(pid) for pid in shell_pids):
        assert time.monotonic() < deadline, [(pid, _cmdline(pid)) for pid in shell_pids if _alive(pid)]
        time.sleep(0.1)
    busy.destroy()


def test_a_remote_provider_is_left_to_its_host() -> None:
    assert IdleReaper(lambda: object(), idle_seconds=1).reap_once() == []
    assert IdleReaper(lambda: None, idle_seconds=1).reap_once() == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_sandbox_whose_save_keeps_failing_is_destroyed_at_the_ceiling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Issue 24: a save that failed on every pass kept the sandbox (and a background `sleep 3000`)
    # alive for ever. Under the ceiling it is still kept, so storage can come back; past it, gone.
    provider = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sb"), "DATA_DIR": str(tmp_path)}))
    now = [time.monotonic()]
    attempts: list[str] = []

    def failing_save(session_id: str) -> None:
        attempts.append(session_id)
        raise OSError("storage is down")

    settings = Settings.from_env({"SANDBOX_IDLE_TIMEOUT": "10"})
    assert settings.sandbox.max_idle == 40  # 4 x the idle timeout, unless SANDBOX_MAX_IDLE_SECONDS says otherwise
    assert Settings.from_env({"SANDBOX_IDLE_TIMEOUT": "10", "SANDBOX_MAX_IDLE_SECONDS": "25"}).sandbox.max_idle == 25
    reaper = IdleReaper(lambda: provider, idle_seconds=10, clock=lambda: now[0], before_destroy=failing_save,
                        max_idle_seconds=settings.sandbox.max_idle)
    sandbox = provider.create("jammed", SandboxOptions())
    sandbox.bash().run("sleep 3000 &")
    launcher = sandbox.bash()._proc
    assert launcher is not None
    sleeper: list[int] = []
    deadline = time.monotonic() + 10  # the background job may not have exec'd sleep yet
    while not sleeper and time.monotonic() < deadline:
        sleeper = [pid for pid in descendants(launcher.pid) if "sleep" in _cmdline(pid)]
        time.sleep(0.05)
    assert sleeper
    started = provider.last_used("jammed")
    assert started is not None
    for idle in (11, 20, 35, 39.9):
        now[0] = started + idle
        assert reaper.reap_once() == [] and provider.sessions() == ["jammed"]
    assert "it is kept for now" in caplog.text
    now[0] = started + 40.5
    assert reaper.reap_once() == ["jammed"] and provider.sessions() == []
    assert len(attempts) == 5 and "past SANDBOX_MAX_IDLE_SECONDS=40" in caplog.text
    deadline = time.monotonic() + 15
    while _alive(sleeper[0]):
        assert time.monotonic() < deadline, "the background sleep outlived its sandbox"
        time.sleep(0.1)
