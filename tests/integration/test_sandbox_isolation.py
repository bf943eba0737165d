"""Real bubblewrap isolation: what a sandboxed command can and cannot do."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap")]


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalSandboxProvider]:
    p = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sandboxes"), "SANDBOX_CPU_SECONDS": "2"}))
    yield p
    for sid in p.sessions():
        p.destroy(sid)


def test_cannot_write_outside_the_workspace(provider: LocalSandboxProvider, tmp_path: Path) -> None:
    sandbox = provider.create("s1", SandboxOptions())
    outside = tmp_path / "outside.txt"
    result = sandbox.exec(
        f"for f in /etc/evil /usr/evil /evil /root/evil {outside} /proc/evil; do "
        "(echo x > $f) 2>/dev/null && echo WROTE $f; done; echo ok > /workspace/inside && echo inside-ok"
    )
    assert "WROTE" not in result.stdout, result.stdout
    assert "inside-ok" in result.stdout
    assert not outside.exists()
    assert sandbox.read_file("/workspace/inside") == b"ok\n"


def test_cannot_read_another_sessions_workspace(provider: LocalSandboxProvider) -> None:
    a = provider.create("alice-session", SandboxOptions())
    b = provider.create("bob-session", SandboxOptions())
    a.write_file("/workspace/secret.txt", "alice-secret-7731")
    host_path = a.workspace / "secret.txt"
    result = b.exec(f"cat {host_path} 2>&1; grep -rs alice-secret-7731 /workspace /tmp /run /etc 2>/dev/null | head -3")
    assert "alice-secret-7731" not in result.stdout
    assert "secret.txt" not in b.exec("find / -name secret.txt -not -path '/proc/*' 2>/dev/null").stdout
    assert b.exec("ls -A /workspace").stdout == ""


def test_no_network_by_default(provider: LocalSandboxProvider) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    accepted: list[bool] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end with nobody having come
            listener.accept()
            accepted.append(True)

    threading.Thread(target=accept, daemon=True).start()
    probe = f"python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')\""
    closed = provider.create("net-off", SandboxOptions()).exec(probe, timeout=10)
    assert "CONNECTED" not in closed.stdout and closed.exit_code != 0
    # Network on is a namespace of its own whose only way out is the egress proxy (as root; without
    # root, no network at all): the host's loopback is not there either.
    opened = provider.create("net-on", SandboxOptions(allow_network=True)).exec(probe, timeout=10)
    assert "CONNECTED" not in opened.stdout and opened.exit_code != 0, opened
    assert accepted == []
    listener.close()


def test_no_server_secrets_in_the_environment(provider: LocalSandboxProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-SECRET1", "API_KEY": "SECRET2", "AWS_SECRET_ACCESS_KEY": "SECRET3",
        "R2_SECRET_ACCESS_KEY": "SECRET4", "SANDBOX_TOKEN": "SECRET5", "AWS_ACCESS_KEY_ID": "SECRET6",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    sandbox = provider.create("s1", SandboxOptions())
    env = sandbox.exec("env; cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n'").stdout
    bash_env = sandbox.bash().run("env").stdout
    for value in secrets.values():
        assert value not in env and value not in bash_env
    assert "HOME=/workspace" in env


def test_killed_at_its_timeout(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create("s1", SandboxOptions())
    result = sandbox.exec("sleep 30 & sleep 30; echo never", timeout=1)
    assert result.timed_out and result.exit_code == 124 and "never" not in result.stdout
    assert "sleep 30" not in sandbox.exec("ps ax 2>/dev/null || ls /proc").stdout


def test_cpu_limit_stops_a_busy_loop(provider: LocalSandboxProvider) -> None:
    result = provider.create("s1", SandboxOptions()).exec("python3 -c 'while True: pass'", timeout=30)
    assert not result.timed_out and result.exit_code != 0  # SIGXCPU/SIGKILL after 2 s of CPU


def test_memory_limit(provider: LocalSandboxProvider, tmp_path: Path) -> None:
    small = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "m"), "SANDBOX_MEMORY_MB": "256"}))
    result = small.create("s1", SandboxOptions()).exec("python3 -c 'x = bytearray(512 * 1024 * 1024); print(\"ALLOCATED\")'")
    assert "ALLOCATED" not in result.stdout and result.exit_code != 0
    small.destroy("s1")


def test_own_pid_namespace(provider: LocalSandboxProvider) -> None:
    out = provider.create("s1", SandboxOptions()).exec("ls /proc | grep -E '^[0-9]+$' | wc -l").stdout
    assert int(out.strip()) < 10


def test_no_capabilities(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create("caps", SandboxOptions())
    status = dict(line.split(":\t") for line in sandbox.exec("cat /proc/self/status").stdout.splitlines() if ":\t" in line)
    assert {status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")} == {"0000000000000000"}, status
    assert status["NoNewPrivs"] == "1"  # so no setuid or file-capability binary can raise them again
    # What the capabilities would allow: device nodes (a host disk), mounts, changing owners.
    result = sandbox.exec("mknod /workspace/disk b 8 0 && echo MKNOD; mkdir -p /workspace/m && "
                          "mount -t tmpfs none /workspace/m && echo MOUNTED; chown 1:1 /workspace/m && echo CHOWNED; true")
    assert "MKNOD" not in result.stdout and "MOUNTED" not in result.stdout and "CHOWNED" not in result.stdout, result.stdout
