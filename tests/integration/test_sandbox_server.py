"""The sandbox host's own behaviour: auth, idle reaping, destroy, errors."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxError, SandboxOptions
from tests.support.sandbox_host import running_sandbox_host, serve
from tests.support.snapshots import manifest_path, write_snapshot

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_auth(tmp_path: Path) -> None:
    with running_sandbox_host(tmp_path) as (url, token):
        assert httpx.get(url + "/health").json()["status"] == "healthy"
        none = httpx.post(url + "/sessions/s1", json={})
        assert none.status_code == 401 and none.json()["code"] == "unauthorized"
        wrong = httpx.post(url + "/sessions/s1", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = httpx.post(url + "/sessions/s1", json={}, headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200 and right.json() == {"sessionId": "s1"}


def test_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    from sandbox_host.server import create_app

    with pytest.raises(SystemExit, match="SANDBOX_TOKEN"):
        create_app(Settings.from_env({"SANDBOX_ROOT": str(tmp_path)}))


def test_idle_sessions_are_reaped(tmp_path: Path) -> None:
    from sandbox_host.server import create_app

    app = create_app(Settings.from_env({"SANDBOX_ROOT": str(tmp_path), "SANDBOX_TOKEN": "t", "SANDBOX_IDLE_TIMEOUT": "60"}))
    host = app.state.host
    with serve(app) as url:
        auth = {"Authorization": "Bearer t"}
        httpx.post(url + "/sessions/idle", json={}, headers=auth)
        httpx.post(url + "/sessions/busy", json={}, headers=auth)
        assert host.reap_idle(now=time.monotonic() + 30) == []
        httpx.post(url + "/sessions/busy/exec", json={"command": "true"}, headers=auth)
        host.last_used["busy"] = time.monotonic() + 50  # used recently, relative to the clock below
        assert host.reap_idle(now=time.monotonic() + 61) == ["idle"]
        gone = httpx.post(url + "/sessions/idle/exec", json={"command": "true"}, headers=auth)
        assert gone.status_code == 404 and gone.json()["code"] == "sandbox_gone"
        assert httpx.get(url + "/sessions/busy", headers=auth).status_code == 200


def test_destroy_and_errors(tmp_path: Path) -> None:
    with running_sandbox_host(tmp_path) as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(url + "/sessions/d1", json={}, headers=auth)
        assert httpx.delete(url + "/sessions/d1", headers=auth).json()["destroyed"] is True
        again = httpx.delete(url + "/sessions/d1", headers=auth)
        assert again.status_code == 404 and set(again.json()) == {"error", "code"}
        httpx.post(url + "/sessions/d2", json={}, headers=auth)
        bad = httpx.put(url + "/sessions/d2/files", json={"files": {"/etc/passwd": "eA=="}}, headers=auth)
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_path"
        junk = httpx.post(url + "/sessions/d2/exec", content=b"not json", headers=auth)
        assert junk.status_code == 400
        badid = httpx.post(url + "/sessions/..%2Fx", json={}, headers=auth)
        assert badid.status_code in (400, 404)


# -- issue 24: the host's API mounts no host folder, caps bodies, answers JSON --------------


def test_no_host_folder_can_be_mounted_over_the_api(tmp_path: Path) -> None:
    with running_sandbox_host(tmp_path) as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(url + "/sessions/m1", json={}, headers=auth)
        mounted = httpx.post(url + "/sessions/m1/mount", json={"spec": {"kind": "bind", "source_dir": "/etc"}}, headers=auth)
        assert mounted.status_code == 422 and mounted.json()["code"] == "mount_failed", mounted.text
        assert "no host folder" in mounted.json()["error"]
        probe = httpx.post(url + "/sessions/m1/exec", json={"command": "ls /workspace/.claude/skills 2>&1; cat /workspace/.claude/skills/passwd 2>&1"},
                           headers=auth).json()
        assert "root:" not in probe["stdout"]
        supported = httpx.post(url + "/mount-support", json={"spec": {"kind": "bind", "source_dir": "/etc"}}, headers=auth)
        assert supported.json() == {"supported": False}


def test_bodies_are_capped_before_they_are_read(tmp_path: Path) -> None:
    with running_sandbox_host(tmp_path, SANDBOX_HOST_MAX_BODY_MB="1") as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(url + "/sessions/b1", json={}, headers=auth)
        # 80 MiB offered in chunks, the end never sent: a host that read it all would still be
        # waiting. It answers 413 once the first MiB passes, with the body unfinished.
        host, port = url.split("://")[1].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(f"PUT /sessions/b1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n".encode())
            answer = b""
            for _ in range(80):
                try:
                    conn.sendall(b"100000\r\n" + b"x" * 2**20 + b"\r\n")
                except OSError:
                    break  # the host closed the connection after answering
                conn.settimeout(0.05)
                try:
                    answer += conn.recv(65536)
                except (TimeoutError, OSError):
                    pass
                if b"\r\n\r\n" in answer:
                    break
            conn.settimeout(10)
            while b"body_too_large" not in answer:
                more = conn.recv(65536)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 413") and b'"code":"body_too_large"' in answer, answer[:300]
        declared = httpx.put(url + "/sessions/b1/files", content=b"x" * (2 * 2**20), headers=auth)
        assert declared.status_code == 413 and "SANDBOX_HOST_MAX_BODY_MB" in declared.json()["error"]
        archive = httpx.put(url + "/sessions/b1/archive?maxBytes=1000", content=b"x" * 5000, headers=auth)
        assert archive.status_code == 413 and archive.json()["code"] == "body_too_large"


@pytest.mark.parametrize("method,path,body", [
    ("PUT", "/sessions/e1/files", {"files": {"/workspace/a": "not base64!"}}),
    ("POST", "/sessions/e1/exec", {"command": "echo \u0000 nul"}),
    ("GET", "/no-such-route", None),
    ("DELETE", "/health", None),
])
def test_every_error_is_json(tmp_path: Path, method: str, path: str, body: object) -> None:
    with running_sandbox_host(tmp_path) as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(url + "/sessions/e1", json={}, headers=auth)
        answer = httpx.request(method, url + path, json=body, headers=auth)
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
        assert set(answer.json()) == {"error", "code"} and answer.headers["content-type"].startswith("application/json")


def test_a_non_utf8_name_travels_through_the_host(tmp_path: Path) -> None:
    from chalicelib.sandbox.remote import RemoteSandboxProvider

    with running_sandbox_host(tmp_path) as (url, token):
        remote = RemoteSandboxProvider(Settings.from_env({"SANDBOX_URL": url, "SANDBOX_TOKEN": token}))
        sandbox = remote.create("n1", SandboxOptions())
        sandbox.exec("touch \"$(printf 'bad\\377')\"")
        assert [e.path for e in sandbox.workspace_entries()] == [os.fsdecode(b"bad\xff")]
        assert [e.path for e in sandbox.list_files("/workspace")] == [os.fsdecode(b"/workspace/bad\xff")]
        data = sandbox.export_workspace(2**20)
        assert data is not None
        sandbox.exec("rm -f /workspace/*")
        sandbox.import_workspace(data, 2**20)
        assert "bad\\377" in sandbox.exec("ls -b /workspace").stdout


def test_incremental_snapshots_travel_through_the_host(tmp_path: Path) -> None:
    from chalicelib.sandbox.remote import RemoteSandboxProvider
    from chalicelib.sandbox.snapshot_format import SnapshotDamaged

    with running_sandbox_host(tmp_path) as (url, token):
        remote = RemoteSandboxProvider(Settings.from_env({"SANDBOX_URL": url, "SANDBOX_TOKEN": token}))
        sandbox = remote.create("inc1", SandboxOptions())
        assert sandbox.snapshot_unchanged() == []  # it never made nor applied one
        sandbox.exec("mkdir -p src && echo one > src/a.txt && touch \"$(printf 'bad\\377')\"")
        first = sandbox.snapshot_delta(2**20, None)
        assert first is not None and first.base is None and first.files == 3
        assert sandbox.snapshot_unchanged() == [first.root_md5]
        assert sandbox.snapshot_delta(2**20, first.root_md5) is None  # 204: nothing changed
        sandbox.exec("echo two > src/a.txt")
        second = sandbox.snapshot_delta(2**20, first.root_md5)
        assert second is not None and second.base == first.root_md5 and second.obsolete
        stored = {**first.objects, **second.objects}
        other = remote.create("inc2", SandboxOptions())
        assert other.import_snapshot(second.root, stored, 2**20) == 2
        assert other.exec("cat src/a.txt; ls -b").stdout == "two\nbad\\377\nsrc\n"
        assert other.snapshot_unchanged() == [second.root_md5]
        missing = {k: v for k, v in stored.items() if "/p-" not in k}
        with pytest.raises(SnapshotDamaged, match="missing"):
            other.import_snapshot(second.root, missing, 2**20)
        assert other.exec("cat src/a.txt").stdout == "two\n"  # refused before anything was removed


@pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs per session needs root")
def test_a_snapshot_that_does_not_fit_the_hosts_disk_is_not_restorable_not_unavailable(tmp_path: Path) -> None:
    # A 5xx would make the API retry the restore forever (503 workspace_restore_failed); a
    # SandboxError lets it set the snapshot aside and go on with an empty workspace.
    from chalicelib.sandbox.base import SandboxUnavailable
    from chalicelib.sandbox.remote import RemoteSandboxProvider

    with running_sandbox_host(tmp_path, SANDBOX_DISK_MB="4") as (url, token):
        remote = RemoteSandboxProvider(Settings.from_env({"SANDBOX_URL": url, "SANDBOX_TOKEN": token}))
        stored: dict[str, bytes] = {}
        write_snapshot(stored.__setitem__, "fit", "alice", {"big.bin": os.urandom(6 * 2**20)})
        objects = {k.rsplit("/alice/", 1)[1]: v for k, v in stored.items() if "/alice/" in k}
        target = remote.create("fit2", SandboxOptions())
        target.exec("echo mine > keep.txt")
        with pytest.raises(SandboxError, match="SANDBOX_DISK_MB") as refused:
            target.import_snapshot(stored[manifest_path("fit", "alice")], objects, 2**24)
        assert not isinstance(refused.value, SandboxUnavailable)
        assert target.exec("cat keep.txt").stdout == "mine\n"
