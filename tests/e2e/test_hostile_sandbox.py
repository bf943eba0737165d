"""A hostile agent against the sandbox (issue 10, items 1, 2, 4, 5, 6).

Most tests drive the public path: REST setup, a real websocket through the local gateway, the
fake Messages API scripted to ask for bash and editor calls, and tools run in real bwrap
sandboxes; the host side is then inspected directly. The swap race and a vanished workspace
are driven through the sandbox API as well, because they need thousands of host operations.
(Here, beside the other end-to-end tests, so that they share the one local gateway a process
can have: Chalice configures its sender once.)
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from chalicelib.agent.tools import run_tool
from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxError, SandboxGone, SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider
from tests.e2e.conftest import World
from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.gateway import receive_until
from tests.support.sandbox_host import running_sandbox_host
from tests.support.snapshots import manifest_path, snapshot_files, write_snapshot

ROOTED = os.geteuid() == 0
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]
needs_root = pytest.mark.skipif(not ROOTED, reason="per-session uids, tmpfs workspaces and cgroups need root")


def agent(world: World, session: str, calls: list[dict[str, Any] | str], *, user: str = "mallory",
          timeout: float = 90.0) -> list[dict[str, Any]]:
    """Run one turn whose model asks for `calls` in order (a str is a bash command); return the
    tool_result frames. The turn must end with a `result` event: the agent never kills it."""
    replies = []
    for call in calls:
        if isinstance(call, str):
            replies.append(Reply([ToolUse("bash", {"command": call})]))
        elif "command" in call and call.get("command") in ("view", "create", "str_replace", "insert"):
            replies.append(Reply([ToolUse("str_replace_based_edit_tool", call)]))
        else:
            replies.append(Reply([ToolUse("bash", call)]))
    replies.append(Reply([Text("done")]))
    world.fake.script(*replies)
    setup = world.setup(session, user)
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start", "maxTurns": len(calls) + 5}))
        receive_until(ws, "status")
        ws.send(json.dumps({"action": "message", "prompt": "go"}))
        frames = receive_until(ws, "result", timeout=timeout)
    results = [f for f in frames if f["event"] == "tool_result"]
    assert len(results) == len(calls), [f["event"] for f in frames]
    return results


def sandbox_root(world: World, session: str) -> Path:
    return world.data_dir.parent / "sandboxes" / session


# -- item 1: nothing the sandbox writes is opened by the host through a path ----------------


def test_a_symlinked_command_file_cannot_write_on_the_host(world: World) -> None:
    target = world.data_dir.parent / "planted.pth"
    results = agent(world, "h-cmd", [
        f"ln -sf {target} /run/sandbox/cmd.sh; ln -sf {target} /run/sandbox/boot.sh; echo planted",
        "echo the-next-command-text",
        {"restart": True},
        "echo after-restart",
        # Every place outside /workspace and /tmp must be read-only (or absent).
        ("for d in / /run /run/sandbox /etc /usr /usr/local /var /var/tmp /home /root /opt /srv /mnt /dev /dev/pts /sys /proc/sys; "
         "do touch \"$d/.probe\" 2>/dev/null && echo \"WRITABLE $d\"; done; "
         "touch /workspace/.probe /tmp/.probe /dev/shm/.probe && echo inside-ok"),
    ])
    assert not target.exists() and not target.is_symlink()
    assert "the-next-command-text" in results[1]["content"]
    assert "after-restart" in results[3]["content"]
    assert "WRITABLE" not in results[4]["content"] and "inside-ok" in results[4]["content"], results[4]
    # Nothing but the workspace is kept for the session on the host.
    assert sorted(p.name for p in sandbox_root(world, "h-cmd").iterdir()) == ["workspace"]


# -- item 2: the swap race against the host's file operations --------------------------------

RENAME_SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}[os.uname().machine]
os.chdir("/workspace/race")
end = float(sys.argv[1])
import time
n = 0
while time.time() < end:
    # renameat2(AT_FDCWD, "d", AT_FDCWD, "l", RENAME_EXCHANGE): the folder and the link trade places.
    libc.syscall(SYS_RENAMEAT2, -100, b"d", -100, b"l", 2)
    n += 1
print("swaps", n)
"""


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalSandboxProvider]:
    p = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sandboxes")}))
    yield p
    for sid in p.sessions():
        p.destroy(sid)


def test_swapping_a_folder_and_a_symlink_never_reaches_another_session(provider: LocalSandboxProvider) -> None:
    victim = provider.create("victim", SandboxOptions())
    victim.write_file("/workspace/secret.txt", "victim-secret-5521")
    attacker = provider.create("attacker", SandboxOptions())
    attacker.write_file("/workspace/race/d/secret.txt", "decoy")
    # The link points at the victim's workspace as the host sees it.
    attacker.exec(f"ln -s {victim.workspace} /workspace/race/l")
    swapper = threading.Thread(target=lambda: attacker.exec(
        f"python3 -c '{RENAME_SWAPPER}' {time.time() + 8}", timeout=20), daemon=True)
    swapper.start()
    time.sleep(0.5)
    outcomes: dict[str, int] = {}
    for i in range(400):
        for path in ("/workspace/race/d/secret.txt", "/workspace/race/l/secret.txt"):
            try:
                content = attacker.read_file(path)
                assert b"victim-secret-5521" not in content
                outcomes["read"] = outcomes.get("read", 0) + 1
            except SandboxError as exc:  # never a bare OSError: the tool call would kill the turn
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            try:
                attacker.write_file(path.replace("secret.txt", f"new-{i}.txt"), "attacker")
                outcomes["write"] = outcomes.get("write", 0) + 1
            except SandboxError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        view = run_tool(attacker, "t", "str_replace_based_edit_tool", {"command": "view", "path": "/workspace/race/d/secret.txt"})
        assert "victim-secret-5521" not in view.content
    swapper.join(timeout=30)
    written = [p.name for p in victim.workspace.iterdir()]
    assert written == ["secret.txt"], written  # nothing was ever written into the victim's workspace
    assert outcomes.get("read", 0) > 0 and outcomes.get("write", 0) > 0, outcomes  # the race was really run


def test_saves_racing_a_folder_and_symlink_swap_never_take_another_sessions_files(provider: LocalSandboxProvider) -> None:
    """Incremental saves while the agent swaps a folder and a link to another session's workspace
    (renameat2 RENAME_EXCHANGE): the snapshots hold the link as a link, never the victim's bytes,
    and a restore of each writes nothing outside the restoring sandbox."""
    import zlib

    from chalicelib.sandbox import snapshot_format as fmt

    victim = provider.create("victim-s", SandboxOptions())
    victim.write_file("/workspace/secret.txt", "victim-secret-7731")
    attacker = provider.create("attacker-s", SandboxOptions())
    attacker.write_file("/workspace/race/d/secret.txt", "decoy")
    attacker.exec(f"ln -s {victim.workspace} /workspace/race/l")
    swapper = threading.Thread(target=lambda: attacker.exec(
        f"python3 -c '{RENAME_SWAPPER}' {time.time() + 6}", timeout=20), daemon=True)
    swapper.start()
    time.sleep(0.5)
    stored: dict[str, bytes] = {}
    base: str | None = None
    last_root = b""
    saves = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        delta = attacker.snapshot_delta(2**20, base)
        if delta is None:
            continue
        saves += 1
        stored.update(delta.objects)
        for key, data in delta.objects.items():
            if "/p-" in key:
                assert b"victim-secret-7731" not in zlib.decompressobj().decompress(data)
        base, last_root = delta.root_md5, delta.root
        entries = fmt.read_entries(fmt.decode_root(delta.root), stored)
        links = [e.rel for e in entries if e.kind == "symlink"]
        assert not [e.rel for e in entries for link in links if e.rel.startswith(link + "/")]
    swapper.join(timeout=30)
    assert saves > 1
    restored = provider.create("restored-s", SandboxOptions())
    restored.import_snapshot(last_root, stored, 2**20)
    assert [p.name for p in victim.workspace.iterdir()] == ["secret.txt"]
    assert "victim-secret-7731" not in restored.exec("cat /workspace/race/d/secret.txt 2>/dev/null; "
                                                    "find /workspace -type f -exec cat {} +").stdout


def test_the_swap_race_through_the_editor_tool_never_reaches_another_user(world: World) -> None:
    victim = agent(world, "h-victim", ["echo victim-secret-7310 > /workspace/secret.txt && echo ok"], user="victim")
    assert "ok" in victim[0]["content"]
    victim_workspace = sandbox_root(world, "h-victim") / "workspace"
    calls: list[dict[str, Any] | str] = [
        (f"mkdir -p /workspace/race/d && echo decoy > /workspace/race/d/secret.txt && ln -s {victim_workspace} /workspace/race/l"
         f" && (python3 -c '{RENAME_SWAPPER}' $(( $(date +%s) + 20 )) > /dev/null 2>&1 &) ; sleep 0.3; echo started"),
    ]
    for i in range(25):
        calls.append({"command": "view", "path": "/workspace/race/d/secret.txt"})
        calls.append({"command": "create", "path": f"/workspace/race/d/planted-{i}.txt", "file_text": "attacker"})
    results = agent(world, "h-race", calls, timeout=120)
    assert "started" in results[0]["content"]
    assert not any("victim-secret-7310" in r["content"] for r in results)
    assert sorted(p.name for p in victim_workspace.iterdir()) == ["secret.txt"]
    assert any(not r["is_error"] for r in results[1:]), results[1:]  # the race ran against working calls


# -- item 6: `view` of a folder -------------------------------------------------------------


def test_viewing_a_folder_lists_it_and_the_turn_goes_on(world: World) -> None:
    results = agent(world, "h-view", [
        "mkdir -p /workspace/sub/deeper && echo x > /workspace/sub/a.txt && ln -s / /workspace/sub/rootlink && mkfifo /workspace/sub/fifo",
        {"command": "view", "path": "/workspace/sub"},
        {"command": "view", "path": "/workspace"},
        {"command": "view", "path": "/workspace/sub/rootlink/etc/passwd"},
        {"command": "view", "path": "/workspace/sub/fifo"},
        {"command": "create", "path": "/workspace/sub/rootlink/tmp/evil", "file_text": "x"},
        "echo still-here",
    ])
    assert not results[1]["is_error"] and "/workspace/sub/a.txt" in results[1]["content"], results[1]
    assert not results[2]["is_error"] and "/workspace/sub/" in results[2]["content"]
    assert results[3]["is_error"] and "symbolic link" in results[3]["content"]
    assert results[4]["is_error"] and "regular file" in results[4]["content"], results[4]
    assert results[5]["is_error"] and "symbolic link" in results[5]["content"]
    assert "still-here" in results[6]["content"]


def test_viewing_folders_leaks_no_file_descriptor(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create("fds", SandboxOptions())
    sandbox.write_file("/workspace/sub/a.txt", "x")
    run_tool(sandbox, "t", "str_replace_based_edit_tool", {"command": "view", "path": "/workspace/sub"})
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        result = run_tool(sandbox, "t", "str_replace_based_edit_tool", {"command": "view", "path": "/workspace/sub"})
        assert not result.is_error
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_a_vanished_workspace_is_sandbox_gone(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create("vanish", SandboxOptions())
    sandbox.write_file("/workspace/a", "x")
    sandbox.bash().run("true")
    if getattr(sandbox, "disk_limited", False):
        from chalicelib.sandbox import linux

        linux.umount_lazy(str(sandbox.workspace))
    shutil.rmtree(sandbox.root)
    for operation in (lambda: sandbox.read_file("/workspace/a"), lambda: sandbox.write_file("/workspace/b", "y"),
                      lambda: sandbox.list_files(), lambda: sandbox.bash().run("true"), lambda: provider.get("vanish")):
        with pytest.raises(SandboxGone):
            operation()
    # Setting the session up again gives a fresh, working sandbox.
    again = provider.create("vanish", SandboxOptions())
    assert again.exec("echo back").stdout == "back\n"


# -- item 5: unprivileged --------------------------------------------------------------------


@needs_root
def test_files_belong_to_the_sessions_uid_and_setuid_gives_nothing(world: World) -> None:
    results = agent(world, "h-uid", [
        "id -u; cp /bin/bash /workspace/rootbash && chmod 4755 /workspace/rootbash && ls -ln /workspace/rootbash",
        # No nested user namespace (it would hand the agent a fresh set of capabilities).
        "unshare --user --map-root-user id -u 2>&1 || echo no-nested-userns",
        {"command": "create", "path": "/workspace/notes/by-editor.txt", "file_text": "hello"},
    ])
    uid = int(results[0]["content"].split()[0])
    assert uid >= 1000, results[0]
    root = sandbox_root(world, "h-uid")
    workspace = root / "workspace"
    copied = os.stat(workspace / "rootbash")
    assert copied.st_uid == uid and copied.st_uid != 0 and copied.st_mode & stat.S_ISUID
    for made_by_the_server in (workspace / "notes", workspace / "notes" / "by-editor.txt"):
        assert os.stat(made_by_the_server).st_uid == uid, made_by_the_server
    assert "no-nested-userns" in results[1]["content"], results[1]
    # The workspace is mounted nosuid,nodev on the host: the kernel ignores the bit for everyone.
    assert os.statvfs(workspace).f_flag & os.ST_NOSUID and os.statvfs(workspace).f_flag & os.ST_NODEV
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(workspace).st_mode) == 0o700


# -- item 4: bounded as a whole --------------------------------------------------------------


@needs_root
def test_a_fork_bomb_is_contained_and_the_session_goes_on(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_PIDS", "48")
    results = agent(world, "h-fork", [
        ":(){ :|:& };: ; sleep 3; echo bombed",
        "ls /workspace > /dev/null && echo alive-after-fork-bomb",
    ])
    assert "limit of 48 processes" in results[0]["content"], results[0]
    assert "alive-after-fork-bomb" in results[1]["content"], results[1]
    assert subprocess.run(["true"], timeout=10, check=False).returncode == 0  # the host can still fork


@needs_root
def test_a_memory_bomb_is_contained_and_the_session_goes_on(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_MEMORY_MB", "192")
    hog = "python3 -c \"import time; x = bytearray(90 << 20); x[::4096] = b'x' * len(x[::4096]); time.sleep(4)\""
    results = agent(world, "h-mem", [
        f"for i in 1 2 3 4; do {hog} & done; wait; echo waited",
        "echo alive-after-memory-bomb",
    ])
    assert "memory limit of 192 MB" in results[0]["content"], results[0]
    assert "alive-after-memory-bomb" in results[1]["content"]


@needs_root
def test_filling_the_workspace_and_tmp_is_contained(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_DISK_MB", "16")
    monkeypatch.setenv("SANDBOX_TMP_MB", "8")
    results = agent(world, "h-disk", [
        "head -c 64M /dev/zero > /workspace/big; ls -l /workspace/big | awk '{print $5}'",
        {"command": "create", "path": "/workspace/more.txt", "file_text": "x" * 100_000},
        "rm /workspace/big && echo workspace-freed && echo ok > /workspace/small && cat /workspace/small",
        "head -c 32M /dev/zero > /tmp/big; ls -l /tmp/big | awk '{print $5}'",
        "rm /tmp/big && echo tmp-freed",
    ])
    assert "No space left on device" in results[0]["content"] and "SANDBOX_DISK_MB" in results[0]["content"]
    assert results[1]["is_error"] and "full" in results[1]["content"], results[1]
    assert "workspace-freed" in results[2]["content"] and "ok" in results[2]["content"]
    assert "No space left on device" in results[3]["content"] and "SANDBOX_TMP_MB" in results[3]["content"]
    assert "tmp-freed" in results[4]["content"]
    workspace = sandbox_root(world, "h-disk") / "workspace"
    size = os.statvfs(workspace)
    assert size.f_blocks * size.f_frsize <= 16 << 20


def test_health_says_which_limits_are_enforced(world: World) -> None:
    limits = world.http.get("/health").json()["sandboxLimits"]
    assert set(limits) >= {"uid", "pids", "memory", "disk", "tmp", "cpu"}
    if ROOTED and Path("/sys/fs/cgroup/pids/cgroup.procs").exists():
        assert limits["pids"].startswith("cgroup") and limits["disk"].startswith("tmpfs")


# -- the sandbox host gets the same isolation ------------------------------------------------


@needs_root
def test_the_sandbox_host_isolates_the_same_way(tmp_path: Path) -> None:
    from chalicelib.sandbox.remote import RemoteSandboxProvider

    target = tmp_path / "planted-on-host"
    root = tmp_path / "host-sandboxes"
    with running_sandbox_host(root, SANDBOX_DISK_MB="8") as (url, token):
        remote = RemoteSandboxProvider(Settings.from_env({"SANDBOX_URL": url, "SANDBOX_TOKEN": token}))
        sandbox = remote.create("remote-1", SandboxOptions())
        bash = sandbox.bash()
        bash.run(f"ln -sf {target} /run/sandbox/cmd.sh 2>&1; touch /workspace/mine")
        bash.run("echo next")
        assert not target.exists()
        assert os.stat(root / "remote-1" / "workspace" / "mine").st_uid != 0
        full = bash.run("head -c 32M /dev/zero > /workspace/big")
        assert "No space left on device" in full.stdout and "SANDBOX_DISK_MB" in full.stdout
        assert bash.run("rm /workspace/big; echo ok").stdout.startswith("ok")
        limits = remote.limits()
        assert limits["disk"].startswith("tmpfs size=8m")
        remote.destroy("remote-1")



@needs_root
def test_without_cgroups_rlimit_nproc_on_the_sessions_uid_contains_a_fork_bomb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from chalicelib.sandbox import bwrap

    monkeypatch.setattr(bwrap, "Cgroups", lambda: SimpleNamespace(version=None))  # a host without writable cgroups
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    p = LocalSandboxProvider(Settings.from_env({"DATA_DIR": str(data), "SANDBOX_PIDS": "40"}))
    try:
        assert p.limits()["pids"] == "RLIMIT_NPROC 40 on the session's uid"
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700 and stat.S_IMODE(os.stat(data / "sandboxes").st_mode) == 0o700
        bash = p.create("nproc", SandboxOptions()).bash()
        bombed = bash.run(":(){ :|:& };: ; sleep 2; echo bombed", timeout=60)
        assert "limit of 40 processes" in bombed.stdout, bombed
        assert bash.run("ls / > /dev/null && echo alive").stdout.startswith("alive")
    finally:
        for sid in p.sessions():
            p.destroy(sid)


CRASHING_SERVER = """
import os, sys
from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider
sandbox = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": sys.argv[1]})).create("crashed", SandboxOptions())
sandbox.exec("echo x > /workspace/left-behind")
print(sandbox.uid, sandbox.cgroup.pids_dir if sandbox.cgroup else "", flush=True)
os._exit(0)  # no clean-up: as if the server was killed
"""


@needs_root
def test_what_a_killed_server_left_is_given_back_at_the_next_start(tmp_path: Path) -> None:
    from tests.support.api import ROOT

    root = tmp_path / "sandboxes"
    out = subprocess.run([sys.executable, "-c", CRASHING_SERVER, str(root)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    workspace = root / "crashed" / "workspace"
    assert os.path.ismount(workspace)
    p = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(root)}))
    assert not os.path.ismount(workspace) and not (root / "crashed").exists()
    if len(out) > 1:
        assert not Path(out[1]).exists()  # its cgroup
    assert p.uids is not None and not p.uids.is_held(int(out[0]))


@needs_root
def test_destroy_takes_the_workspace_mount_down_even_after_its_folder_was_renamed(tmp_path: Path) -> None:
    p = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "a" / "sandboxes")}))
    sandbox = p.create("renamed", SandboxOptions())
    assert sandbox.disk_limited
    os.rename(tmp_path / "a", tmp_path / "b")  # as pytest moves an old temporary folder before deleting it
    p.destroy("renamed")
    assert "/b/sandboxes/renamed/workspace" not in Path("/proc/self/mountinfo").read_text()


# -- issue 24: a network-on agent reaches nothing on the host ------------------------------


@needs_root
def test_a_network_on_agent_cannot_use_the_api_on_the_host(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_KEY", raising=False)  # ./scripts/dev's default: the API trusts its callers
    assert world.http.put("/users/bob/settings", json={"systemPrompt": "BOB-PRIVATE-8812"}).status_code == 200
    assert world.http.put("/users/mallory/settings", json={"allowNetwork": True, "permissions": {"web_fetch": "ask"}}).status_code == 200
    host = world.url.split("://", 1)[1]
    port = host.rsplit(":", 1)[1]
    patch = "-X PATCH -H 'content-type: application/json' -d '{\"permissions\": {\"web_fetch\": \"allow\"}}'"
    results = agent(world, "h-net-api", [
        f"curl -sS -m 5 {world.url}/users/bob/settings 2>&1",  # direct (NO_PROXY names 127.0.0.1)
        f"curl --noproxy '' -sS -m 5 {world.url}/users/bob/settings 2>&1",  # through the proxy
        f"curl --noproxy '' -sS -m 5 http://localhost:{port}/users/bob/settings 2>&1",  # by name
        f"curl -sS -m 5 {patch} {world.url}/users/mallory/settings 2>&1; "
        f"curl --noproxy '' -sS -m 5 {patch} {world.url}/users/mallory/settings 2>&1",
    ])
    outputs = [json.dumps(r) for r in results]
    assert not any("BOB-PRIVATE" in out for out in outputs), outputs
    assert "Couldn't connect" in outputs[0] and "127.0.0.1 is a loopback address" in outputs[1]
    assert "is a loopback address" in outputs[2] and "loopback address" in outputs[3], outputs
    assert world.http.get("/users/mallory/settings").json()["settings"]["permissions"] == {"web_fetch": "ask"}


# -- issue 24: no content in the workspace jams saving ---------------------------------------


def _snapshot(world: World, session: str, user: str = "mallory") -> Path:
    return world.data_dir / manifest_path(session, user)


def _store_snapshot(world: World, session: str, files: dict[str, bytes]) -> None:
    """Put a snapshot into the embedded store's folder, as a save would have written it."""
    def put(key: str, data: bytes) -> None:
        (world.data_dir / key).parent.mkdir(parents=True, exist_ok=True)
        (world.data_dir / key).write_bytes(data)

    write_snapshot(put, session, "mallory", files)


def _reap(world: World, session: str) -> None:
    """Destroy the session's sandbox in the gateway as its idle reaper does (the record stays)."""
    from chalicelib.config import current_settings
    from chalicelib.container import get_container

    _eventually(lambda: not (world.data_dir / "sessions" / session / "state.json").exists()
                or json.loads((world.data_dir / "sessions" / session / "state.json").read_text()).get("turn") is None)
    assert get_container(current_settings()).sandboxes.destroy(session)


def _eventually(check: Any, timeout: float = 30.0) -> bool:
    """Whether `check()` became true within `timeout` (the save follows the turn's result frame)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def test_a_non_utf8_name_and_a_1500_deep_tree_are_saved_listed_and_restored(world: World) -> None:
    deep = "import os\nfor i in range(1500):\n  os.mkdir('d'); os.chdir('d')\nopen('deep.txt','w').write('DEEP-END')"
    agent(world, "h-names", [
        "cd /workspace && touch \"$(printf 'bad\\377')\" && printf 'raw' > \"$(printf 'caf\\303\\251')\" && "
        f"python3 -c \"{deep}\" && echo made",
    ])
    saved = _snapshot(world, "h-names")
    assert _eventually(saved.exists), "the turn's save wrote the snapshot"
    listed = world.http.get("/sessions/h-names/files")
    assert listed.status_code == 200, listed.text
    files = {f["path"]: f for f in listed.json()["files"]}
    assert files["/workspace/bad\\xff"]["pathBytes"] == base64.b64encode(b"/workspace/bad\xff").decode()
    assert "pathBytes" not in files["/workspace/caf\u00e9"] or files["/workspace/caf\u00e9"]["pathBytes"] is None
    assert any(p.endswith("/d/deep.txt") and p.split("/").count("d") == 1500 for p in files)
    # Destroyed as the idle reaper does, then set up again: both come back from the snapshot.
    _reap(world, "h-names")
    listed = world.http.get("/sessions/h-names/files").json()
    assert listed["source"] == "snapshot" and "/workspace/bad\\xff" in {f["path"] for f in listed["files"]}
    results = agent(world, "h-names", ["ls /workspace | od -c | head -2; find /workspace -name deep.txt -exec cat {} +"])
    assert "b   a   d 377" in results[0]["content"] and "DEEP-END" in results[0]["content"], results
    _reap(world, "h-names")  # its deep tree goes with its tmpfs, not through pytest's rmtree


def test_a_failed_save_tells_the_client_and_is_retried_at_the_next_turn(world: World) -> None:
    agent(world, "h-savefail", ["echo first > /workspace/a.txt"])
    saved = _snapshot(world, "h-savefail")
    assert _eventually(saved.exists)
    saved.unlink()
    saved.mkdir()  # the store cannot write the snapshot there: a real fault, not a mock
    replies = [Reply([ToolUse("bash", {"command": "echo second > /workspace/a.txt"})]), Reply([Text("done")])]
    world.fake.script(*replies)
    setup = world.setup("h-savefail", "mallory")
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start"}))
        receive_until(ws, "status")
        ws.send(json.dumps({"action": "message", "prompt": "go"}))
        frames = receive_until(ws, "result", timeout=60)
        frames += receive_until(ws, "status", timeout=30) if not any(f.get("status") == "workspace_save_failed" for f in frames) else []
    failed = [f for f in frames if f.get("status") == "workspace_save_failed"]
    assert failed and "could not be saved" in failed[0]["message"] and "next turn" in failed[0]["message"], frames
    saved.rmdir()
    agent(world, "h-savefail", ["cat /workspace/a.txt"])
    assert _eventually(saved.is_file)
    _reap(world, "h-savefail")
    got = world.http.get("/sessions/h-savefail/files/content", params={"path": "a.txt"})
    assert got.status_code == 200 and got.content == b"second\n", got.text


# -- issue 24: a snapshot that cannot be restored never bricks its session -------------------


def _too_big_snapshot() -> bytes:
    """What the bucket holds after SANDBOX_DISK_MB was lowered under a workspace: a valid archive
    whose files no longer fit the sandbox's disk."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, body in (("a.txt", b"keep\n"), ("big.bin", os.urandom(6 * 2**20))):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@needs_root
def test_a_snapshot_that_cannot_be_restored_leaves_the_session_usable(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_DISK_MB", "4")
    session = "h-unrestored"
    setup = world.setup(session, "mallory")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo keep > /workspace/a.txt"})]), Reply([Text("one")]),
                      Reply([ToolUse("bash", {"command": "ls -A /workspace; echo listed"})]), Reply([Text("two")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start"}))
        receive_until(ws, "status")
        ws.send(json.dumps({"action": "message", "prompt": "one"}))
        receive_until(ws, "result", timeout=60)
        _reap(world, session)
        _store_snapshot(world, session, {"a.txt": b"keep\n", "big.bin": os.urandom(6 * 2**20)})
        ws.send(json.dumps({"action": "message", "prompt": "two"}))
        frames = receive_until(ws, "result", timeout=60)
    notes = [f for f in frames if f.get("status") == "workspace_not_restored"]
    assert notes and "SANDBOX_DISK_MB" in notes[0]["message"] and "snapshot=unrestored" in notes[0]["message"], frames
    listing = next(f for f in frames if f["event"] == "tool_result")["content"]
    assert "a.txt" not in listing and "listed" in listing  # an empty workspace, and the turn went on
    aside = world.http.get(f"/sessions/{session}/files", params={"snapshot": "unrestored"})
    assert aside.status_code == 200 and aside.json()["source"] == "unrestored"
    assert {f["path"] for f in aside.json()["files"]} == {"/workspace/a.txt", "/workspace/big.bin"}
    got = world.http.get(f"/sessions/{session}/files/content", params={"path": "a.txt", "snapshot": "unrestored"})
    assert got.status_code == 200 and got.content == b"keep\n"
    gone = world.http.delete(f"/sessions/{session}/files/content", params={"path": "big.bin", "snapshot": "unrestored"})
    assert gone.status_code == 200, gone.text
    bad = world.http.get(f"/sessions/{session}/files", params={"snapshot": "other"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
    assert set(snapshot_files(lambda k: (world.data_dir / k).read_bytes(), session, "mallory", unrestored=True)) == {"a.txt"}
    # The setup path too, with a snapshot of the earlier layout (one archive): set aside, setup answers 200.
    _reap(world, session)
    _snapshot(world, session).unlink(missing_ok=True)
    (world.data_dir / f"sessions/{session}/workspace/mallory.tar.gz").write_bytes(_too_big_snapshot())
    again = world.http.post(f"/setup/{session}?userId=mallory")
    assert again.status_code == 200, again.text
    assert "could not be restored" in again.json()["workspaceNotRestored"]


def test_a_sandbox_reaped_at_the_ceiling_says_so_at_its_next_turn(world: World) -> None:
    from chalicelib.config import current_settings
    from chalicelib.container import get_container
    from devserver.reaper import IdleReaper

    session = "h-ceiling"
    container = get_container(current_settings())
    setup = world.setup(session, "mallory")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo kept > /workspace/a.txt"})]), Reply([Text("one")]),
                      Reply([ToolUse("bash", {"command": "cat /workspace/a.txt; sleep 3000 & echo started"})]),
                      Reply([Text("two")]), Reply([ToolUse("bash", {"command": "cat /workspace/a.txt"})]), Reply([Text("three")]))

    def storage_down(session_id: str) -> None:
        raise OSError("storage is down")  # what the gateway's own reaper meets during an outage

    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start"}))
        receive_until(ws, "status")
        for prompt in ("one", "two"):
            ws.send(json.dumps({"action": "message", "prompt": prompt}))
            receive_until(ws, "result", timeout=60)
        _eventually(lambda: json.loads((world.data_dir / "sessions" / session / "state.json").read_text()).get("turn") is None)
        used = container.sandboxes.last_used(session)
        assert used is not None
        clock = [used + 30.0]
        reaper = IdleReaper(lambda: container.sandboxes, idle_seconds=10, clock=lambda: clock[0], before_destroy=storage_down,
                            max_idle_seconds=40, on_lost_save=container.sessions.remember_lost_save)
        assert reaper.reap_once() == [] and session in container.sandboxes.sessions()  # kept: storage may come back
        clock[0] = used + 41.0
        assert reaper.reap_once() == [session]
        ws.send(json.dumps({"action": "message", "prompt": "three"}))
        frames = receive_until(ws, "result", timeout=60)
    lost = [f for f in frames if f.get("status") == "workspace_save_failed"]
    assert lost and "SANDBOX_MAX_IDLE_SECONDS=40" in lost[0]["message"] and "storage is down" in lost[0]["message"], frames
    assert "sandbox_recreated" in [f.get("status") for f in frames]
    assert "kept" in next(f for f in frames if f["event"] == "tool_result")["content"]  # the last good snapshot
