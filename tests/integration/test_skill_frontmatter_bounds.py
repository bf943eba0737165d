"""Issue 23's YAML findings: frontmatter is bounded in depth and size at upload (422), and
anything stored behind the API that breaks the bounds still lists, never a 500."""

from __future__ import annotations

import time

import pytest

from tests.support.api import Api

DEEP = "---\nname: deep\ndescription: " + "[" * 500 + "]" * 500 + "\n---\n# Deep\n"
DEEP_BLOCK = "---\n" + "".join(" " * i + f"k{i}:\n" for i in range(300)) + " " * 300 + "v: 1\n---\n# Deep\n"
HUGE = "---\nname: huge\ndescription: x\nfiller: \"" + "y" * (300 * 1024) + "\"\n---\n# Huge\n"


@pytest.mark.parametrize("content", [DEEP, DEEP_BLOCK, HUGE], ids=["deep-flow", "deep-block", "300KB"])
def test_unbounded_frontmatter_is_refused_in_every_skill_form(local_api: Api, content: str) -> None:
    before = local_api.keys()
    flat = local_api.post("/users/u/skills", {"name": "bad.md", "content": content})
    assert flat.status_code == 422 and flat.json_body["code"] == "invalid_frontmatter", flat.json_body
    folder = local_api.post("/users/u/skills", {"name": "bad", "files": {"SKILL.md": content.replace("deep", "bad").replace("huge", "bad")}})
    assert folder.status_code == 422 and folder.json_body["code"] == "invalid_frontmatter", folder.json_body
    assert local_api.keys() == before


def test_what_is_stored_behind_the_api_still_lists_quickly(local_api: Api) -> None:
    assert local_api.post("/users/u/skills", {"name": "good.md", "content": "# Good\nFine."}).status_code == 200
    local_api.write_raw("users/u/skills/deep.md", DEEP.encode())
    for i in range(6):
        local_api.write_raw(f"users/u/skills/huge{i}.md", HUGE.encode())
    started = time.monotonic()
    listed = local_api.get("/users/u/skills")
    elapsed = time.monotonic() - started
    assert listed.status_code == 200, listed.json_body
    assert "good.md" in listed.json_body["skills"] and "deep.md" in listed.json_body["skills"]
    items = {i["name"]: i for i in listed.json_body["items"]}
    assert items["good.md"]["error"] is None
    assert "deeper than" in items["deep.md"]["error"] and "limit" in items["huge0.md"]["error"]
    again = local_api.get("/users/u/skills").json_body  # from the catalog the first list folded
    assert again["items"] == listed.json_body["items"]
    assert local_api.get("/users/u/skills/deep.md").status_code == 200
    assert local_api.post("/setup/fm1?userId=u").status_code == 200
    print(f"\nlisting 8 skills (6 with 300 KB headers, 1 nested 500 deep): {elapsed:.3f} s")
