"""Storage operations per endpoint, counted with botocore event hooks and pinned.

A change that adds a round trip to an endpoint fails here. The README's cost table (Class A /
Class B operations) is computed from OPS.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.container import get_container
from chalicelib.services.skill_catalog import SkillCatalog
from tests.support.api import ROOT, Api, make_api

SKILL_MD = "---\nname: pdf-tools\ndescription: PDFs. Use for PDFs.\n---\nbody"

# endpoint → exact S3 operations, for a user with 3 flat skills + 1 folder skill (2 files),
# 2 conversations and settings. A skill write adds one small object, the skill's catalog entry
# (skill_catalog.py), whatever the number of skills; the first list and the first setup after
# writes fold what changed into the catalog and the bundle. Then a list is the listing alone in
# a process that has seen the user (the listing and the catalog in one that has not), and a
# setup reads 3 objects (record, settings, bundle) whatever the number of skills.
OPS: dict[str, dict[str, int]] = {
    "POST /users/{u}/skills (flat)": {"PutObject": 2},
    # A folder upload also takes the folder's writer lease (PUT, then a free DELETE) and
    # writes its manifest last (skill_folders.py: concurrent uploads never merge); a first upload
    # puts up an empty manifest before its files (readers see none of it half-written).
    "POST /users/{u}/skills (folder, 2 files)": {"ListObjectsV2": 1, "PutObject": 6, "DeleteObject": 1},
    # The listing alone: this process remembers each skill's entry by its main file's ETag.
    "GET /users/{u}/skills (3 flat, 1 folder)": {"ListObjectsV2": 1},
    # Another process: the catalog (none yet) and the 4 uploads' own entries, folded into one...
    "GET /users/{u}/skills (first in another process after 4 uploads)": {"ListObjectsV2": 1, "GetObject": 5, "PutObject": 1},
    # ...which the next process reads alongside the listing (one round trip).
    "GET /users/{u}/skills (first in another process)": {"ListObjectsV2": 1, "GetObject": 1},
    "GET /users/{u}/skills/{flat}": {"GetObject": 1},
    "GET /users/{u}/skills/{folder}": {"ListObjectsV2": 1, "GetObject": 3},  # the 2 files and the manifest
    "DELETE /users/{u}/skills/{flat}": {"HeadObject": 1, "DeleteObject": 2},  # the file and its catalog entry
    "DELETE /users/{u}/skills/{folder}": {"ListObjectsV2": 1, "DeleteObjects": 1, "PutObject": 1, "DeleteObject": 2},
    # the GET reads the parts the replaced head names, to delete those the new one drops (issue 21)
    "POST /users/{u}/conversations": {"GetObject": 1, "PutObject": 1},
    "GET /users/{u}/conversations/{id}": {"GetObject": 1},
    "GET /users/{u}/conversations": {"ListObjectsV2": 1},
    "DELETE /users/{u}/conversations/{id}": {"HeadObject": 1, "DeleteObject": 1, "ListObjectsV2": 1},
    "GET /users/{u}/settings": {"GetObject": 1},
    "PUT /users/{u}/settings": {"PutObject": 1},
    "PATCH /users/{u}/settings": {"GetObject": 1, "PutObject": 1},
    # + the listing of the user's workspace markers (workspace-owners/{u}/), and for each of its
    # three sessions the listing of the user's snapshot objects (packs and segments) in it
    "DELETE /users/{u}": {"ListObjectsV2": 6, "DeleteObjects": 3, "GetObject": 3},
    # the first after uploads: the bundle written. This process holds what its uploads wrote (the
    # bodies and their catalog entries); another would read the 5 files first.
    "POST /setup/{s}?userId={u} (first after uploads)": {"GetObject": 3, "ListObjectsV2": 1, "PutObject": 4},
    # record, settings, bundle: the skills' descriptions are checked against the listing by ETag
    # in this process's memory (a process that has not seen the user reads the catalog too)
    "POST /setup/{s}?userId={u} (4 skills, 5 files)": {"GetObject": 3, "ListObjectsV2": 1, "PutObject": 3},
    # a file written straight to the bucket: read on its own, described, then the bundle and the
    # catalog (read, then written If-Match) rewritten alongside the record
    "POST /setup/{s}?userId={u} (after an out-of-band write)": {"GetObject": 6, "ListObjectsV2": 1, "PutObject": 5},
    # the record (whose workspace), the snapshot root's HEAD (an empty workspace: nothing written,
    # an archive of the earlier layout deleted, free on R2), then the records
    "DELETE /sandbox/{s}": {"GetObject": 1, "HeadObject": 1, "ListObjectsV2": 1, "DeleteObjects": 2},
    "GET /health": {},
}

# Which operations R2 bills as Class A (writes, lists) and Class B (reads); deletes are free.
CLASS_A = {"PutObject", "ListObjectsV2", "CopyObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
CLASS_B = {"GetObject", "HeadObject"}


@pytest.fixture
def s3_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> Iterator[tuple[Api, Counter[str]]]:
    api = make_api("s3", tmp_path, monkeypatch, moto_endpoint)
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
    settings = Settings.from_env({**os.environ, **stage_env})
    counts: Counter[str] = Counter()
    client = get_container(settings).store.client  # type: ignore[attr-defined]
    client.meta.events.register("before-call.s3", lambda model, **_: counts.update([model.name]))
    yield api, counts


def forget_catalog() -> None:
    """Drop the skills catalog entries this process remembers, as a fresh process starts."""
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
    skills = get_container(Settings.from_env({**os.environ, **stage_env})).skills
    skills.catalog = SkillCatalog(skills.store)


def measure(counts: Counter[str], call) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts.clear()
    response = call()
    assert response.status_code < 400, response.body
    return dict(counts)


def test_operation_counts_are_pinned(s3_api: tuple[Api, Counter[str]]) -> None:
    api, counts = s3_api
    seen: dict[str, dict[str, int]] = {}
    for name in ("a.md", "b.md", "c.md"):
        seen["POST /users/{u}/skills (flat)"] = measure(counts, lambda n=name: api.post("/users/u/skills", {"name": n, "content": f"# {n}"}))
    seen["POST /users/{u}/skills (folder, 2 files)"] = measure(
        counts, lambda: api.post("/users/u/skills", {"name": "pdf-tools", "files": {"SKILL.md": SKILL_MD, "x.py": "1"}}))
    forget_catalog()  # as a process that has not seen this user (another Lambda container)
    seen["GET /users/{u}/skills (first in another process after 4 uploads)"] = measure(counts, lambda: api.get("/users/u/skills"))
    seen["GET /users/{u}/skills (3 flat, 1 folder)"] = measure(counts, lambda: api.get("/users/u/skills"))
    forget_catalog()
    seen["GET /users/{u}/skills (first in another process)"] = measure(counts, lambda: api.get("/users/u/skills"))
    seen["GET /users/{u}/skills/{flat}"] = measure(counts, lambda: api.get("/users/u/skills/a.md"))
    seen["GET /users/{u}/skills/{folder}"] = measure(counts, lambda: api.get("/users/u/skills/pdf-tools"))
    seen["POST /users/{u}/conversations"] = measure(counts, lambda: api.post("/users/u/conversations", {"conversationId": "c1", "messages": []}))
    api.post("/users/u/conversations", {"conversationId": "c2", "messages": []})
    seen["GET /users/{u}/conversations/{id}"] = measure(counts, lambda: api.get("/users/u/conversations/c1"))
    seen["GET /users/{u}/conversations"] = measure(counts, lambda: api.get("/users/u/conversations"))
    seen["PUT /users/{u}/settings"] = measure(counts, lambda: api.send("PUT", "/users/u/settings", {"maxTurns": 3}))
    seen["GET /users/{u}/settings"] = measure(counts, lambda: api.get("/users/u/settings"))
    seen["PATCH /users/{u}/settings"] = measure(counts, lambda: api.send("PATCH", "/users/u/settings", {"maxTurns": 4}))
    seen["POST /setup/{s}?userId={u} (first after uploads)"] = measure(counts, lambda: api.post("/setup/s0?userId=u"))
    api.delete("/sandbox/s0")
    seen["POST /setup/{s}?userId={u} (4 skills, 5 files)"] = measure(counts, lambda: api.post("/setup/s1?userId=u"))
    seen["DELETE /sandbox/{s}"] = measure(counts, lambda: api.delete("/sandbox/s1"))
    api.s3.put_object(Bucket=api.bucket, Key="users/u/skills/d.md", Body=b"# d")
    seen["POST /setup/{s}?userId={u} (after an out-of-band write)"] = measure(counts, lambda: api.post("/setup/s2?userId=u"))
    api.delete("/sandbox/s2")
    seen["DELETE /users/{u}/conversations/{id}"] = measure(counts, lambda: api.delete("/users/u/conversations/c2"))
    seen["DELETE /users/{u}/skills/{flat}"] = measure(counts, lambda: api.delete("/users/u/skills/c.md"))
    seen["DELETE /users/{u}/skills/{folder}"] = measure(counts, lambda: api.delete("/users/u/skills/pdf-tools"))
    seen["GET /health"] = measure(counts, lambda: api.get("/health"))
    seen["DELETE /users/{u}"] = measure(counts, lambda: api.delete("/users/u"))
    print("\nS3 operations per endpoint:")
    for endpoint, ops in seen.items():
        a = sum(n for op, n in ops.items() if op in CLASS_A)
        b = sum(n for op, n in ops.items() if op in CLASS_B)
        print(f"  {endpoint:50s} A={a} B={b}  {ops}")
    assert seen == OPS
