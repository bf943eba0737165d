"""The workspace files API (GET/PUT/DELETE /sessions/{s}/files...), on local bubblewrap sandboxes
over the embedded store and on a sandbox host over S3 (moto server): while the sandbox runs,
and after it is gone (from the snapshot)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.container import get_container
from tests.support.api import ROOT, Api, make_api
from tests.support.sandbox_host import running_sandbox_host

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

OCTET = {"Content-Type": "application/octet-stream", "Accept": "*/*"}


@pytest.fixture(params=["local", "remote"])
def files_api(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """Local sandboxes + embedded store, or a sandbox host + S3 on moto server."""
    if request.param == "local":
        yield make_api("local", tmp_path, monkeypatch, None)
        return
    api = make_api("s3", tmp_path, monkeypatch, request.getfixturevalue("moto_endpoint"))
    with running_sandbox_host(tmp_path / "host") as (url, token):
        monkeypatch.setenv("SANDBOX_URL", url)
        monkeypatch.setenv("SANDBOX_TOKEN", token)
        yield api


def body(response: Any) -> Any:
    return json.loads(response.body)


def put(api: Api, session: str, path: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return api.client.http.put(f"/sessions/{session}/files/content?path={path}", headers={**OCTET, **(headers or {})}, body=data)


def get(api: Api, session: str, path: str, accept: str = "*/*") -> Any:
    return api.client.http.get(f"/sessions/{session}/files/content?path={path}", headers={"Accept": accept})


def sandbox(session: str) -> Any:
    """The session's live sandbox, from the container the app uses (its stage's environment)."""
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
    return get_container(Settings.from_env({**os.environ, **stage_env})).sessions.sandbox_for(session)


def test_upload_list_download_delete_while_the_sandbox_runs_and_after_destroy(files_api: Api) -> None:
    api = files_api
    assert api.post("/users/alice/skills", {"name": "notes.md", "content": "# Notes\n\nRead me."}).status_code == 200
    assert api.post("/setup/f1?userId=alice").status_code == 200
    blob = bytes(range(256)) * 40
    up = put(api, "f1", "data/blob.bin", blob)
    assert up.status_code == 200, up.body
    assert body(up) == {"status": "written", "sessionId": "f1", "path": "/workspace/data/blob.bin", "size": len(blob), "source": "sandbox"}
    assert put(api, "f1", "/workspace/readme.md", "# Hello ✓\n".encode()).status_code == 200
    # The agent sees what was uploaded.
    assert sandbox("f1").exec("cat /workspace/readme.md").stdout == "# Hello ✓\n"

    listing = body(api.get("/sessions/f1/files"))
    assert listing["source"] == "sandbox"
    paths = {f["path"]: f for f in listing["files"]}
    assert set(paths) == {"/workspace/.claude", "/workspace/data", "/workspace/data/blob.bin", "/workspace/readme.md"}
    assert paths["/workspace/data/blob.bin"]["size"] == len(blob) and paths["/workspace/data/blob.bin"]["type"] == "file"
    assert paths["/workspace/data"]["type"] == "dir" and paths["/workspace/data/blob.bin"]["modified"].endswith("Z") or "+00:00" in paths["/workspace/data/blob.bin"]["modified"]

    binary = get(api, "f1", "data/blob.bin")
    assert binary.status_code == 200 and binary.body == blob
    assert binary.headers["Content-Type"] == "application/octet-stream"
    assert 'filename="blob.bin"' in binary.headers["Content-Disposition"]
    text = get(api, "f1", "readme.md", accept="text/markdown")
    assert text.status_code == 200 and text.body.decode() == "# Hello ✓\n"
    assert text.headers["Content-Type"] == "text/markdown; charset=utf-8"
    refused = get(api, "f1", "data/blob.bin", accept="application/json")
    assert refused.status_code == 406 and body(refused)["code"] == "not_acceptable"

    assert body(api.delete("/sessions/f1/files/content?path=readme.md"))["status"] == "deleted"
    assert get(api, "f1", "readme.md").status_code == 404
    assert api.delete("/sessions/f1/files/content?path=readme.md").status_code == 404

    # Destroyed: the files come from the snapshot, and can still be changed there.
    assert api.delete("/sandbox/f1").status_code == 200
    after = body(api.get("/sessions/f1/files"))
    assert after["source"] == "snapshot"
    assert {f["path"] for f in after["files"]} == {"/workspace/.claude", "/workspace/data", "/workspace/data/blob.bin"}
    assert get(api, "f1", "data/blob.bin").body == blob
    assert body(put(api, "f1", "later/note.txt", b"after destroy"))["source"] == "snapshot"
    assert get(api, "f1", "later/note.txt").body == b"after destroy"
    assert body(api.delete("/sessions/f1/files/content?path=data"))["source"] == "snapshot"
    assert {f["path"] for f in body(api.get("/sessions/f1/files"))["files"]} == {"/workspace/.claude", "/workspace/later", "/workspace/later/note.txt"}
    # Erasing the user erases the workspace too.
    assert api.delete("/users/alice").status_code == 200
    gone = api.get("/sessions/f1/files")
    assert gone.status_code == 404 and body(gone)["code"] == "session_not_found"
    assert not [k for k in api.keys() if "workspace" in k]


def test_confinement_and_caps(files_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = files_api
    assert api.post("/setup/f2?userId=bob").status_code == 200
    box = sandbox("f2")
    # The agent plants links: to a host file, to a folder outside, and to a file inside.
    result = box.exec("ln -s /etc/passwd /workspace/passwd && ln -s /etc /workspace/etc && "
                      "echo inside > /workspace/real.txt && ln -s /workspace/real.txt /workspace/alias.txt")
    assert result.exit_code == 0, result.stderr
    for path in ("../etc/passwd", "/etc/passwd", "/workspace/../etc/passwd", "passwd", "etc/passwd", "alias.txt",
                 ".claude/skills/x.md"):
        got = get(api, "f2", path)
        assert got.status_code == 400, (path, got.status_code, got.body)
        assert body(got)["code"] == "invalid_path"
        assert b"root:" not in got.body
    for path in ("passwd", "etc/evil", "alias.txt", "../x", "/tmp/x", ".claude/skills/x.md"):
        wrote = put(api, "f2", path, b"pwned")
        assert wrote.status_code == 400, (path, wrote.status_code, wrote.body)
    assert b"pwned" not in Path("/etc/passwd").read_bytes()
    assert box.exec("cat /workspace/real.txt").stdout == "inside\n"
    missing = api.client.http.get("/sessions/f2/files/content", headers={"Accept": "*/*"})
    assert missing.status_code == 400 and body(missing)["code"] == "path_required"
    assert api.get("/sessions/nobody/files").status_code == 404


def test_upload_and_snapshot_caps(files_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = files_api
    monkeypatch.setenv("WORKSPACE_UPLOAD_MB", "1")
    monkeypatch.setenv("WORKSPACE_SNAPSHOT_MB", "1")
    assert api.post("/setup/f3?userId=carol").status_code == 200
    big = put(api, "f3", "big.bin", b"x" * (1024 * 1024 + 1))
    assert big.status_code == 413 and body(big)["code"] == "upload_too_large"
    assert "WORKSPACE_UPLOAD_MB" in body(big)["error"]
    assert put(api, "f3", "ok.bin", b"x" * (1024 * 1024)).status_code == 200

    # A workspace past WORKSPACE_SNAPSHOT_MB cannot be saved: the upload lands, the save says why.
    assert sandbox("f3").exec("head -c 3000000 /dev/urandom > /workspace/random.bin").exit_code == 0
    over = put(api, "f3", "small.txt", b"small")
    assert over.status_code == 413 and body(over)["code"] == "workspace_snapshot_too_large"
    assert "WORKSPACE_SNAPSHOT_MB=1" in body(over)["error"]


def container_sandboxes() -> Any:
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
    return get_container(Settings.from_env({**os.environ, **stage_env})).sandboxes


def test_setup_after_the_sandbox_vanished_restores_it(files_api: Api) -> None:
    api = files_api
    assert api.post("/setup/f5?userId=alice").status_code == 200
    assert put(api, "f5", "keep/me.txt", b"kept").status_code == 200
    assert container_sandboxes().destroy("f5")  # as the idle reaper or a host restart would
    assert body(api.get("/sessions/f5/files"))["source"] == "snapshot"
    assert api.post("/setup/f5?userId=alice").status_code == 200
    assert sandbox("f5").exec("cat /workspace/keep/me.txt").stdout == "kept"
    assert body(api.get("/sessions/f5/files"))["source"] == "sandbox"


def test_a_session_id_stays_its_owners_while_anything_of_it_remains(files_api: Api) -> None:
    api = files_api
    assert api.post("/setup/f4?userId=alice").status_code == 200
    assert put(api, "f4", "secret.txt", b"alice's secret").status_code == 200
    assert api.delete("/sandbox/f4").status_code == 200
    assert get(api, "f4", "secret.txt").body == b"alice's secret"  # alice's snapshot, after destroy

    # Her snapshot remains, so the id is still hers (issue 23: it changed hands here before).
    taken = api.post("/setup/f4?userId=bob")
    assert taken.status_code == 409 and body(taken)["code"] == "session_owned_by_another_user"
    assert get(api, "f4", "secret.txt").body == b"alice's secret"
    assert api.post("/setup/f4?userId=alice").status_code == 200  # alice may set it up again
    assert api.delete("/sandbox/f4").status_code == 200

    assert api.delete("/users/alice").status_code == 200  # nothing of alice's f4 remains: the id is free
    assert not [k for k in api.keys() if k.startswith("sessions/f4/") or k.startswith("workspace-owners/")]
    assert api.post("/setup/f4?userId=bob").status_code == 200
    assert "secret" not in sandbox("f4").exec("ls -A /workspace; cat /workspace/secret.txt").stdout
    assert put(api, "f4", "bob.txt", b"bob's").status_code == 200
    assert container_sandboxes().destroy("f4")  # bob's sandbox vanishes; setup restores bob's files only
    assert api.post("/setup/f4?userId=bob").status_code == 200
    assert sandbox("f4").exec("ls /workspace").stdout.split() == ["bob.txt"]
    assert api.delete("/users/bob").status_code == 200
    assert not [k for k in api.keys() if "/workspace/" in k or k.startswith("workspace-owners/")]

def test_setup_after_delete_sandbox_restores_the_kept_snapshot(files_api: Api) -> None:
    """DELETE /sandbox keeps the snapshot (and the claim): the owner's next setup restores it, and
    its first save builds on it instead of replacing it with an empty workspace."""
    api = files_api
    assert api.post("/setup/f6?userId=alice").status_code == 200
    assert put(api, "f6", "kept.txt", b"before destroy").status_code == 200
    assert api.delete("/sandbox/f6").status_code == 200
    assert api.post("/setup/f6?userId=alice").status_code == 200
    assert sandbox("f6").exec("cat /workspace/kept.txt").stdout == "before destroy"
    assert put(api, "f6", "new.txt", b"after").status_code == 200
    assert api.delete("/sandbox/f6").status_code == 200
    listed = body(api.get("/sessions/f6/files"))
    assert listed["source"] == "snapshot"
    assert {f["path"] for f in listed["files"]} == {"/workspace/kept.txt", "/workspace/new.txt"}
    assert get(api, "f6", "kept.txt").body == b"before destroy"
