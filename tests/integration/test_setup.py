"""POST /setup and DELETE /sandbox: skills in the session's sandbox by every method."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from chalice.test import Client

from chalicelib.config import Settings
from chalicelib.container import get_container
from tests.support.api import ROOT, Api

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

SKILL_MD = "---\nname: pdf-tools\ndescription: PDFs. Use for PDFs.\n---\n# PDF\n"


def sandbox_of(session_id: str, stage: str = "dev"):  # type: ignore[no-untyped-def]
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"][stage]["environment_variables"]
    return get_container(Settings.from_env({**os.environ, **stage_env})).sessions.sandbox_for(session_id)


def upload_skills(api: Api) -> None:
    api.post("/users/alice/skills", {"name": "debugging.md", "content": "# Debugging Skill\n\nWhen debugging..."})
    api.post("/users/alice/skills", {"name": "pdf-tools", "files": {"SKILL.md": SKILL_MD, "scripts/fill.py": "print('fill')"}})
    api.post("/users/bob/skills", {"name": "bob.md", "content": "# Bob"})


def test_development_loads_each_skill_file(api: Api) -> None:
    upload_skills(api)
    r = api.post("/setup/session-abc?userId=alice")
    body = r.json_body
    assert r.status_code == 200, body
    assert body["status"] == "ready" and body["setupMethod"] == "r2_load_dev"
    assert body["skillsLoaded"] == [
        "/workspace/.claude/skills/debugging.md",
        "/workspace/.claude/skills/pdf-tools/SKILL.md",
        "/workspace/.claude/skills/pdf-tools/scripts/fill.py",
    ]
    assert body["websocketUrl"].endswith("/ws?sessionId=session-abc") and len(body["token"]) >= 32
    assert body["message"].startswith("Sandbox prepared. Connect via WebSocket to ")
    sandbox = sandbox_of("session-abc")
    assert sandbox.read_file("/workspace/.claude/skills/debugging.md") == b"# Debugging Skill\n\nWhen debugging..."
    assert sandbox.read_file("/workspace/.claude/skills/pdf-tools/SKILL.md").decode() == SKILL_MD
    assert "bob" not in sandbox.exec("find /workspace").stdout
    record = json.loads(api.raw("sessions/session-abc/session.json"))
    assert record["userId"] == "alice" and record["setupMethod"] == "r2_load_dev"
    assert body["token"] not in json.dumps(record)  # only its hash is stored


def test_setup_is_idempotent_and_refreshes(api: Api) -> None:
    upload_skills(api)
    first = api.post("/setup/s2?userId=alice").json_body
    sandbox_of("s2").write_file("/workspace/notes.txt", "kept")
    api.delete("/users/alice/skills/debugging.md")
    api.post("/users/alice/skills", {"name": "new.md", "content": "# New"})
    second = api.post("/setup/s2?userId=alice").json_body
    assert "/workspace/.claude/skills/debugging.md" not in second["skillsLoaded"]
    assert "/workspace/.claude/skills/new.md" in second["skillsLoaded"]
    assert second["token"] != first["token"]
    sandbox = sandbox_of("s2")
    assert sandbox.read_file("/workspace/notes.txt") == b"kept"
    assert "debugging.md" not in sandbox.exec("ls /workspace/.claude/skills").stdout


BUNDLE = "users/alice/cache/skills-bundle.json"


def test_files_changed_behind_the_api_are_loaded_fresh_and_the_bundle_catches_up(api: Api) -> None:
    upload_skills(api)
    # Uploads leave the bundle alone (rewriting it cost every upload the size of every skill):
    # the first setup builds it, and the folder's manifest rides in it too.
    assert BUNDLE not in api.keys()
    assert api.post("/setup/s-first?userId=alice").status_code == 200
    assert set(json.loads(api.raw(BUNDLE))["files"]) == {
        "debugging.md", "pdf-tools/SKILL.md", "pdf-tools/scripts/fill.py", "pdf-tools/.skill-manifest.json"}
    api.write_raw("users/alice/skills/debugging.md", b"# Changed behind the API")
    api.write_raw("users/alice/skills/extra.md", b"# Extra")
    body = api.post("/setup/s-fresh?userId=alice").json_body
    assert "/workspace/.claude/skills/extra.md" in body["skillsLoaded"]
    sandbox = sandbox_of("s-fresh")
    assert sandbox.read_file("/workspace/.claude/skills/debugging.md") == b"# Changed behind the API"
    assert sandbox.read_file("/workspace/.claude/skills/extra.md") == b"# Extra"
    files = json.loads(api.raw(BUNDLE))["files"]
    assert files["debugging.md"]["text"] == "# Changed behind the API" and files["extra.md"]["text"] == "# Extra"


def test_a_damaged_bundle_does_not_break_setup_and_is_rebuilt(api: Api) -> None:
    upload_skills(api)
    api.write_raw(BUNDLE, b"\x00 not a bundle")
    r = api.post("/setup/s-damaged?userId=alice")
    assert r.status_code == 200, r.json_body
    assert sandbox_of("s-damaged").read_file("/workspace/.claude/skills/pdf-tools/SKILL.md").decode() == SKILL_MD
    assert json.loads(api.raw(BUNDLE))["files"]["pdf-tools/SKILL.md"]["text"] == SKILL_MD


def test_user_id_is_required_and_session_owned(local_api: Api) -> None:
    missing = local_api.post("/setup/s3")
    assert missing.status_code == 400 and missing.json_body["code"] == "missing_user_id"
    assert local_api.post("/setup/s3?userId=alice").status_code == 200
    stolen = local_api.post("/setup/s3?userId=mallory")
    assert stolen.status_code == 409 and stolen.json_body["code"] == "session_owned_by_another_user"


@pytest.mark.parametrize("path", ["/setup/..?userId=a", "/setup/a%2Fb?userId=a", "/setup/ok?userId=..", "/setup/ok?userId=a/b", "/setup/" + "x" * 200 + "?userId=a"])
def test_bad_ids_are_refused(local_api: Api, path: str) -> None:
    r = local_api.post(path)
    assert r.status_code == 400 and r.json_body["code"].startswith("invalid_")


def test_destroy(local_api: Api) -> None:
    local_api.post("/setup/s4?userId=alice")
    sandbox = sandbox_of("s4")
    r = local_api.delete("/sandbox/s4")
    assert r.json_body == {"status": "destroyed", "sessionId": "s4"}
    assert not sandbox.root.exists()
    # Only the ownership claim stays: the id is alice's until she is erased.
    assert [k for k in local_api.keys() if k.startswith("sessions/s4/")] == ["sessions/s4/owner.json"]
    unknown = local_api.delete("/sandbox/s4")
    assert unknown.status_code == 404 and unknown.json_body["code"] == "session_not_found"
    taken = local_api.post("/setup/s4?userId=mallory")
    assert taken.status_code == 409 and taken.json_body["code"] == "session_owned_by_another_user"
    assert local_api.post("/setup/s4?userId=alice").status_code == 200
    assert local_api.delete("/sandbox/s4").status_code == 200
    assert local_api.delete("/users/alice").status_code == 200
    assert not [k for k in local_api.keys() if k.startswith("sessions/s4/")]
    assert local_api.post("/setup/s4?userId=mallory").status_code == 200  # free once alice is erased



def production(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("API_KEY", "k")
    api.client = Client(__import__("app").app, stage_name="prod", project_dir=str(ROOT))
    api.headers = {"Authorization": "Bearer k"}
    return api


FUSE = os.path.exists("/dev/fuse") and shutil.which("s3fs") is not None and os.geteuid() == 0


@pytest.mark.fuse
@pytest.mark.skipif(not FUSE, reason="needs /dev/fuse, s3fs and root for a real s3fs mount")
@pytest.mark.parametrize("api", ["s3"], indirect=True)
def test_production_mounts_the_users_prefix(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_skills(api)
    api = production(api, monkeypatch)
    assert api.post("/setup/prod-0?userId=alice").status_code == 200  # builds the bundle and the catalog
    api.delete("/sandbox/prod-0")
    ops: list[str] = []
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["prod"]["environment_variables"]
    client = get_container(Settings.from_env({**os.environ, **stage_env})).store.client  # type: ignore[attr-defined]
    client.meta.events.register("before-call.s3", lambda model, **_: ops.append(model.name))
    body = api.post("/setup/prod-1?userId=alice").json_body
    assert body["setupMethod"] == "r2_mount", body
    # Record, settings, the skills listing and bundle (they feed the session's skill index, with
    # the descriptions this process remembers; the mount itself serves the files) in parallel
    # (the user's limits are cached since prod-0), then the ownership claim of the new id, then
    # the record and the claim's erasure marker in parallel.
    assert sorted(ops) == ["GetObject"] * 3 + ["ListObjectsV2", "PutObject", "PutObject", "PutObject"], ops
    assert "/workspace/.claude/skills/debugging.md" in body["skillsLoaded"]
    sandbox = sandbox_of("prod-1", "prod")
    assert sandbox.exec("cat /workspace/.claude/skills/debugging.md").stdout.startswith("# Debugging Skill")
    assert "bob" not in sandbox.exec("find /workspace/.claude").stdout
    api.delete("/sandbox/prod-1")


@pytest.mark.parametrize("api", ["s3"], indirect=True)
def test_production_mount_failure_falls_back_with_files_present(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_skills(api)
    monkeypatch.setenv("SANDBOX_MOUNT_ENDPOINT_URL", "http://127.0.0.1:9")  # the mount cannot reach storage
    api = production(api, monkeypatch)
    body = api.post("/setup/prod-2?userId=alice").json_body
    assert body["setupMethod"] == "r2_load_fallback", body
    assert body["fallbackReason"]
    assert "/workspace/.claude/skills/pdf-tools/SKILL.md" in body["skillsLoaded"]
    sandbox = sandbox_of("prod-2", "prod")
    assert sandbox.read_file("/workspace/.claude/skills/pdf-tools/SKILL.md").decode() == SKILL_MD
    api.delete("/sandbox/prod-2")
