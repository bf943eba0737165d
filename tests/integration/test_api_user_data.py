"""Every user-data route, over the embedded store and over S3 (moto server), with the
original's response fields and keys."""

from __future__ import annotations

import json

from tests.support.api import Api

SKILL_MD = "---\nname: pdf-tools\ndescription: Fill and merge PDFs. Use when the user mentions PDFs.\n---\n# PDF tools\n\nSteps..."


def test_health_reports_backend_and_original_fields(api: Api) -> None:
    body = api.get("/health").json_body
    assert body["status"] == "healthy"
    assert body["storage"] == ("local" if api.backend == "local" else "s3")
    for field in ("environment", "hasApiKey", "hasSandbox", "hasR2", "timestamp", "version"):
        assert field in body


def test_original_complete_example_flow(api: Api) -> None:
    up = api.post("/users/alice/skills", {"name": "debugging.md", "content": "# Debugging Skill\n\nWhen debugging..."})
    assert up.status_code == 200
    assert up.json_body == {
        "status": "success", "userId": "alice", "skillName": "debugging.md", "key": "users/alice/skills/debugging.md",
        "message": "Skill debugging.md uploaded for user alice", "form": "flat", "files": ["users/alice/skills/debugging.md"],
    }
    assert up.headers["ETag"].startswith('"')
    listed = api.get("/users/alice/skills").json_body
    assert listed["userId"] == "alice" and listed["skills"] == ["debugging.md"] and listed["count"] == 1
    saved = api.post("/users/alice/conversations", {"conversationId": "conv-1", "messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}], "metadata": {"startedAt": "2025-01-15T10:00:00Z"}})
    assert saved.json_body == {"status": "saved", "userId": "alice", "conversationId": "conv-1", "key": "users/alice/conversations/conv-1.json"}
    got = api.get("/users/alice/conversations/conv-1").json_body
    assert got["conversation"]["messages"][1] == {"role": "assistant", "content": "Hi!"}
    assert got["metadata"] == {"startedAt": "2025-01-15T10:00:00Z"}
    assert set(got) == {"userId", "conversationId", "conversation", "metadata", "uploaded"}
    # The objects sit at the original's keys.
    assert api.raw("users/alice/skills/debugging.md").startswith(b"# Debugging Skill")
    assert json.loads(api.raw("users/alice/conversations/conv-1.json"))["conversationId"] == "conv-1"


def test_folder_skill_roundtrip_and_replacement(api: Api) -> None:
    files = {"SKILL.md": SKILL_MD, "scripts/merge.py": "print('merge')", "reference.md": "# Ref"}
    assert api.post("/users/bob/skills", {"name": "pdf-tools", "files": files}).status_code == 200
    assert set(api.keys()) >= {"users/bob/skills/pdf-tools/SKILL.md", "users/bob/skills/pdf-tools/scripts/merge.py", "users/bob/skills/pdf-tools/reference.md"}
    detail = api.get("/users/bob/skills/pdf-tools").json_body
    assert detail["content"] == SKILL_MD and detail["form"] == "folder"
    assert detail["description"].startswith("Fill and merge PDFs")
    assert detail["files"] == {"scripts/merge.py": "print('merge')", "reference.md": "# Ref"}
    # Re-uploading replaces the folder: files no longer present are gone.
    assert api.post("/users/bob/skills", {"name": "pdf-tools", "files": {"SKILL.md": SKILL_MD}}).status_code == 200
    # (The manifest, written last, names the files the folder holds; the writer's lease is gone.)
    assert [k for k in api.keys() if k.startswith("users/bob/skills/")] == [
        "users/bob/skills/pdf-tools/.skill-manifest.json", "users/bob/skills/pdf-tools/SKILL.md"]
    assert not [k for k in api.keys() if "/skill-uploads/" in k]


def test_content_without_md_is_an_agent_skill(api: Api) -> None:
    r = api.post("/users/bob/skills", {"name": "pdf-tools", "content": SKILL_MD})
    assert r.status_code == 200 and r.json_body["key"] == "users/bob/skills/pdf-tools"
    assert "users/bob/skills/pdf-tools/SKILL.md" in api.keys()


def test_skill_list_items_and_pagination(api: Api) -> None:
    api.post("/users/carol/skills", {"name": "pdf-tools", "content": SKILL_MD})
    for name in ("a.md", "b.md", "c.md"):
        api.post("/users/carol/skills", {"name": name, "content": f"# Skill {name}\n\nDoes {name}."})
    full = api.get("/users/carol/skills").json_body
    assert full["skills"] == ["a.md", "b.md", "c.md", "pdf-tools"]
    item = full["items"][3]
    assert item["form"] == "folder" and item["path"] == "/workspace/.claude/skills/pdf-tools/SKILL.md"
    assert full["items"][0]["description"] == "Skill a.md: Does a.md." and full["items"][0]["size"] > 0
    seen, cursor, pages = [], None, 0
    while pages < 10:
        page = api.get("/users/carol/skills?limit=3" + (f"&cursor={cursor}" if cursor else "")).json_body
        seen += page["skills"]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == full["skills"] and pages == 2


def test_skill_pages_end_on_whole_folders_and_list_what_breaks_the_rules(api: Api) -> None:
    big = {"SKILL.md": SKILL_MD.replace("pdf-tools", "big-tools"), **{f"x{i:02d}.txt": "x" for i in range(80)}}
    assert api.post("/users/erin/skills", {"name": "big-tools", "files": big}).status_code == 200
    for name in ("a.md", "z.md"):
        api.post("/users/erin/skills", {"name": name, "content": f"# {name}"})
    api.write_raw("users/erin/skills/loose/notes.txt", b"a folder without SKILL.md, written behind the API")
    seen, cursor, pages = [], None, 0
    while pages < 10:
        page = api.get("/users/erin/skills?limit=1" + (f"&cursor={cursor}" if cursor else "")).json_body
        assert page["count"] == 1  # a folder of 82 files is one item, never cut across two pages
        seen += page["items"]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert [i["name"] for i in seen] == ["a.md", "big-tools", "loose", "z.md"]
    errors = {i["name"]: i["error"] for i in seen}
    assert errors == {"a.md": None, "big-tools": None, "loose": "The folder has no SKILL.md.", "z.md": None}
    assert api.get("/users/erin/skills?cursor=" + "eyJ0IjoieCJ9").status_code == 400  # an old-style cursor: start again


def test_skill_get_and_delete_and_404s(api: Api) -> None:
    api.post("/users/dan/skills", {"name": "debugging.md", "content": "# D"})
    got = api.get("/users/dan/skills/debugging.md")
    assert got.status_code == 200 and set(got.json_body) >= {"userId", "skillName", "content", "metadata", "uploaded", "size"}
    assert got.headers["ETag"]
    gone = api.delete("/users/dan/skills/debugging.md")
    assert gone.json_body == {"status": "deleted", "userId": "dan", "skillName": "debugging.md", "key": "users/dan/skills/debugging.md"}
    missing = api.get("/users/dan/skills/debugging.md")
    assert missing.status_code == 404 and missing.json_body == {"error": "Skill not found", "code": "skill_not_found"}
    assert api.delete("/users/dan/skills/debugging.md").status_code == 404
    api.post("/users/dan/skills", {"name": "pdf-tools", "content": SKILL_MD})
    assert api.delete("/users/dan/skills/pdf-tools").status_code == 200
    assert not [k for k in api.keys() if k.startswith("users/dan/")]


def test_conversations_list_newest_first_paginated_and_delete(api: Api) -> None:
    for i in range(5):
        api.post("/users/erin/conversations", {"conversationId": f"c{i}", "messages": []})
    listed = api.get("/users/erin/conversations?limit=2").json_body
    assert listed["count"] == 2
    seen, cursor = list(listed["conversations"]), listed["nextCursor"]
    for _ in range(5):
        if cursor is None:
            break
        page = api.get(f"/users/erin/conversations?limit=2&cursor={cursor}").json_body
        seen += page["conversations"]
        cursor = page["nextCursor"]
    updated = [c["updated"] for c in seen]
    assert updated == sorted(updated, reverse=True)
    assert sorted(c["conversationId"] for c in seen) == [f"c{i}" for i in range(5)]
    assert api.delete("/users/erin/conversations/c1").json_body["status"] == "deleted"
    assert api.get("/users/erin/conversations/c1").json_body == {"error": "Conversation not found", "code": "conversation_not_found"}
    assert api.delete("/users/erin/conversations/c1").status_code == 404


def test_conversation_id_required(api: Api) -> None:
    r = api.post("/users/erin/conversations", {"messages": []})
    assert r.status_code == 400 and r.json_body["error"] == "conversationId is required"


CONTROL_DEFAULTS = {"network": None, "permissions": {}, "maxBudgetUsd": None, "webSearch": False, "webFetch": False, "mcpServers": []}


def test_settings_defaults_put_patch(api: Api) -> None:
    first = api.get("/users/fay/settings").json_body
    assert first["settings"] == {"model": None, "maxTurns": None, "systemPrompt": None, "allowNetwork": False, "thinking": None, "preferences": {},
                                 **CONTROL_DEFAULTS}
    put = api.send("PUT", "/users/fay/settings", {"model": "claude-sonnet-4-6", "maxTurns": 10, "preferences": {"theme": {"dark": True, "size": 1}}})
    assert put.status_code == 200 and put.headers["ETag"]
    patched = api.send("PATCH", "/users/fay/settings", {"systemPrompt": "Be brief.", "preferences": {"theme": {"size": None, "font": "mono"}}}).json_body
    assert patched["settings"] == {"model": "claude-sonnet-4-6", "maxTurns": 10, "systemPrompt": "Be brief.", "allowNetwork": False, "thinking": None,
                                   "preferences": {"theme": {"dark": True, "font": "mono"}}, **CONTROL_DEFAULTS}
    assert json.loads(api.raw("users/fay/settings/preferences.json"))["systemPrompt"] == "Be brief."
    cleared = api.send("PATCH", "/users/fay/settings", {"model": None}).json_body
    assert cleared["settings"]["model"] is None


def test_etag_preconditions(api: Api) -> None:
    first = api.post("/users/gus/conversations", {"conversationId": "c", "messages": []})
    etag = first.headers["ETag"]
    dup = api.post("/users/gus/conversations", {"conversationId": "c", "messages": [1]}, headers={"If-None-Match": "*"})
    assert dup.status_code == 412 and dup.json_body["code"] == "precondition_failed"
    ok = api.post("/users/gus/conversations", {"conversationId": "c", "messages": [2]}, headers={"If-Match": etag})
    assert ok.status_code == 200 and ok.headers["ETag"] != etag
    stale = api.post("/users/gus/conversations", {"conversationId": "c", "messages": [3]}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert json.loads(api.raw("users/gus/conversations/c.json"))["messages"] == [2]
    skill = api.post("/users/gus/skills", {"name": "x.md", "content": "1"}, headers={"If-None-Match": "*"})
    assert skill.status_code == 200
    assert api.post("/users/gus/skills", {"name": "x.md", "content": "2"}, headers={"If-None-Match": "*"}).status_code == 412
    assert api.post("/users/gus/skills", {"name": "x.md", "content": "2"}, headers={"If-Match": '"nope"'}).status_code == 412
    assert api.post("/users/gus/skills", {"name": "x.md", "content": "2"}, headers={"If-Match": skill.headers["ETag"]}).status_code == 200
    settings = api.send("PUT", "/users/gus/settings", {"maxTurns": 3})
    assert api.send("PUT", "/users/gus/settings", {"maxTurns": 4}, headers={"If-Match": '"stale"'}).status_code == 412
    assert api.send("PATCH", "/users/gus/settings", {"maxTurns": 5}, headers={"If-Match": settings.headers["ETag"]}).status_code == 200


def test_erase_user_removes_everything_and_counts(api: Api) -> None:
    api.post("/users/hal/skills", {"name": "a.md", "content": "a"})
    api.post("/users/hal/skills", {"name": "pdf-tools", "content": SKILL_MD})
    api.post("/users/hal/conversations", {"conversationId": "c", "messages": []})
    api.send("PUT", "/users/hal/settings", {"maxTurns": 2})
    api.post("/users/other/skills", {"name": "keep.md", "content": "k"})
    r = api.delete("/users/hal")
    # 2 skill files, the folder's manifest, a conversation, settings, and the 2 skills' catalog entries
    assert r.json_body == {"status": "deleted", "userId": "hal", "objectsDeleted": 7}
    assert list(api.keys()) == ["users/other/cache/skill-catalog/keep.md.json", "users/other/skills/keep.md"]


def test_storage_outage_is_a_503_with_retry_after_and_changes_nothing(local_api: Api, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("R2_BUCKET", "down")
    for response in (local_api.post("/users/alice/skills", {"name": "a.md", "content": "x"}),
                     local_api.get("/users/alice/skills"), local_api.get("/users/alice/conversations/c1")):
        assert response.status_code == 503, response.body
        assert response.headers["Retry-After"] == "5"
        assert response.json_body["code"] == "storage_unavailable"
        assert "retry" in response.json_body["error"].lower()


def test_skill_list_never_shows_stale_descriptions(api: Api) -> None:
    api.post("/users/ivy/skills", {"name": "a.md", "content": "# Old title\n\nOld summary."})
    api.write_raw("users/ivy/skills/a.md", b"# New title\n\nNew summary, written behind the API.")
    item = api.get("/users/ivy/skills").json_body["items"][0]
    assert "New" in item["description"] and "Old" not in item["description"]
    assert item["size"] == len(b"# New title\n\nNew summary, written behind the API.")
