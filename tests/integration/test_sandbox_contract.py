"""The Sandbox contract, run against every implementation."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import (
    MountError,
    MountSpec,
    Sandbox,
    SandboxFileNotFound,
    SandboxGone,
    SandboxIsADirectory,
    SandboxOptions,
    SandboxPathError,
    SandboxProvider,
)
from chalicelib.sandbox.bwrap import LocalSandboxProvider
from tests.support.sandbox_host import running_sandbox_host

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")]


@pytest.fixture(params=["local", "remote"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SandboxProvider]:
    env = {"SANDBOX_ROOT": str(tmp_path / "sandboxes")}
    if request.param == "local":
        p = LocalSandboxProvider(Settings.from_env(env))
        yield p
        for sid in p.sessions():
            p.destroy(sid)
    else:
        with running_sandbox_host(tmp_path / "host-sandboxes") as (url, token):
            from chalicelib.sandbox.remote import RemoteSandboxProvider

            yield RemoteSandboxProvider(Settings.from_env({**env, "SANDBOX_URL": url, "SANDBOX_TOKEN": token}))


@pytest.fixture
def sandbox(provider: SandboxProvider) -> Sandbox:
    return provider.create("contract-1", SandboxOptions())


def test_files_roundtrip(sandbox: Sandbox) -> None:
    sandbox.write_file("/workspace/a/b.txt", "hello")
    sandbox.write_files({"/workspace/x.md": b"# x", "y/z.txt": "zz"})
    assert sandbox.read_file("/workspace/a/b.txt") == b"hello"
    assert sandbox.read_file("y/z.txt") == b"zz"
    paths = {e.path for e in sandbox.list_files() if not e.is_dir}
    assert paths == {"/workspace/a/b.txt", "/workspace/x.md", "/workspace/y/z.txt"}
    with pytest.raises(SandboxIsADirectory):  # the editor's `view` lists a folder on this
        sandbox.read_file("/workspace/a")
    sandbox.delete_file("/workspace/a")
    with pytest.raises(SandboxFileNotFound):
        sandbox.read_file("/workspace/a/b.txt")
    sandbox.delete_file("/workspace/never-existed")


@pytest.mark.parametrize("path", ["/etc/passwd", "../etc/passwd", "/workspace/../etc/passwd", "/workspacex/a", "a\x00b"])
def test_paths_outside_the_workspace_are_refused(sandbox: Sandbox, path: str) -> None:
    with pytest.raises(SandboxPathError):
        sandbox.write_file(path, "x")
    with pytest.raises(SandboxPathError):
        sandbox.read_file(path)


def test_symlinks_planted_inside_cannot_reach_out(sandbox: Sandbox, tmp_path: Path) -> None:
    target = tmp_path / "host-secret.txt"
    target.write_text("host secret")
    sandbox.exec(f"ln -s {target} /workspace/link; ln -s / /workspace/rootlink")
    with pytest.raises(SandboxPathError):
        sandbox.read_file("/workspace/link")
    with pytest.raises(SandboxPathError):
        sandbox.write_file("/workspace/rootlink/tmp/x", "x")
    assert target.read_text() == "host secret"


def test_exec_codes_output_and_cap(sandbox: Sandbox) -> None:
    ok = sandbox.exec("echo out; echo err >&2; exit 3")
    assert (ok.exit_code, ok.stdout, ok.stderr) == (3, "out\n", "err\n")
    assert sandbox.exec("pwd").stdout == "/workspace\n"
    big = sandbox.exec("head -c 50000 /dev/zero | tr '\\0' a", max_output=1000)
    assert len(big.stdout) == 1000 and big.stdout_truncated and not big.stderr_truncated


def test_exec_timeout(sandbox: Sandbox) -> None:
    result = sandbox.exec("sleep 20", timeout=1)
    assert result.timed_out and result.exit_code == 124


def test_bash_session_keeps_cwd_and_env(sandbox: Sandbox) -> None:
    bash = sandbox.bash()
    bash.run("mkdir -p /workspace/proj && cd /workspace/proj && export GREETING=hi")
    result = bash.run("pwd; echo $GREETING")
    assert result.stdout == "/workspace/proj\nhi\n" and result.exit_code == 0
    assert bash.run("false").exit_code == 1


def test_hung_bash_command_is_killed_and_the_session_lives(sandbox: Sandbox) -> None:
    bash = sandbox.bash()
    bash.run("cd /tmp && export KEEP=1")
    hung = bash.run("sleep 60", timeout=1)
    assert hung.timed_out and hung.exit_code == 124
    assert bash.run("pwd; echo $KEEP").stdout == "/tmp\n1\n"
    spin = bash.run("while true; do :; done", timeout=1)
    assert spin.timed_out
    assert bash.run("pwd; echo $KEEP").stdout == "/tmp\n1\n"


def test_bash_restart_resets(sandbox: Sandbox) -> None:
    bash = sandbox.bash()
    bash.run("cd /tmp; export X=1")
    bash.restart()
    assert bash.run("pwd; echo ${X:-unset}").stdout == "/workspace\nunset\n"


def test_bash_output_cap(sandbox: Sandbox) -> None:
    result = sandbox.bash().run("seq 1 100000", max_output=100)
    assert result.stdout_truncated and result.stdout.startswith("1\n2\n")


def test_bind_mount_shows_only_this_users_files(provider: SandboxProvider, tmp_path: Path) -> None:
    data = tmp_path / "data" / "users"
    (data / "alice" / "skills").mkdir(parents=True)
    (data / "alice" / "skills" / "debugging.md").write_text("# alice skill")
    (data / "bob" / "skills").mkdir(parents=True)
    (data / "bob" / "skills" / "bob-only.md").write_text("# bob")
    sandbox = provider.create("mount-1", SandboxOptions())
    # The mount holds the user's skills only (users/{u}/skills/), at /workspace/.claude/skills.
    (data / "alice" / "settings").mkdir()
    (data / "alice" / "settings" / "preferences.json").write_text('{"allowNetwork": false}')
    if provider.kind == "remote":
        # The sandbox host binds no host folder over its API (a leaked token would mount /etc).
        with pytest.raises(MountError, match="no host folder"):
            sandbox.mount_bucket(MountSpec(kind="bind", source_dir=str(data / "alice" / "skills")))
        return
    seen = sandbox.mount_bucket(MountSpec(kind="bind", source_dir=str(data / "alice" / "skills")))
    assert seen == ["/workspace/.claude/skills/debugging.md"]
    assert "preferences" not in sandbox.exec("find /workspace 2>&1").stdout
    assert sandbox.read_file("/workspace/.claude/skills/debugging.md") == b"# alice skill"
    assert sandbox.exec("cat /workspace/.claude/skills/debugging.md").stdout == "# alice skill"
    assert "bob" not in sandbox.exec("find / -name 'bob-only.md' 2>/dev/null; ls /workspace/.claude").stdout


def test_empty_mount_raises(provider: SandboxProvider, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    sandbox = provider.create("mount-2", SandboxOptions())
    with pytest.raises(MountError):
        sandbox.mount_bucket(MountSpec(kind="bind", source_dir=str(empty)))


def test_destroy_and_unknown_session(provider: SandboxProvider) -> None:
    sandbox = provider.create("gone-1", SandboxOptions())
    sandbox.write_file("/workspace/f", "x")
    assert provider.destroy("gone-1") is True
    assert provider.destroy("gone-1") is False
    with pytest.raises(SandboxGone):
        provider.get("gone-1")
    with pytest.raises(SandboxGone):
        sandbox.read_file("/workspace/f")


def test_create_is_idempotent(provider: SandboxProvider) -> None:
    first = provider.create("same-1", SandboxOptions())
    first.write_file("/workspace/keep", "1")
    again = provider.create("same-1", SandboxOptions())
    assert again.read_file("/workspace/keep") == b"1"
