"""Production's storage mount, attacked by the agent: only the user's skills are mounted, with
R2 temporary credentials scoped to them (a stand-in of Cloudflare's endpoint issues them), so
settings, conversations, the bundle and session records are out of the agent's reach.

The real path: REST setup and a websocket through the local gateway in production mode, a
scripted model whose bash calls run on the sandbox host, s3fs over moto server.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.fakes.fake_cloudflare import FakeCloudflare
from tests.support.gateway import receive_until
from tests.support.s3 import create_bucket, storage_settings
from tests.support.sandbox_host import running_sandbox_host

REASON = None
if not os.path.exists("/dev/fuse") or shutil.which("s3fs") is None:
    REASON = "s3fs-FUSE is not available here"
elif shutil.which("bwrap") is None:
    REASON = "bubblewrap is not installed"
elif os.geteuid() != 0:
    REASON = "mounting with s3fs needs root here"
pytestmark = [pytest.mark.slow, pytest.mark.fuse, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

API_KEY = "prod-key"
BUCKET_WIDE_SECRET = "bucket-wide-secret-4471"
CF_TOKEN = "cf-parent-token-0193"
ACCOUNT = "acct0193"
SETTINGS = {"allowNetwork": False, "systemPrompt": "SETTINGS-MARKER-5521"}
SECRET_TEXT = "CONVERSATION-SECRET-7731"


@dataclass
class Production:
    world: Any
    cloudflare: FakeCloudflare
    s3: Any
    bucket: str
    host_root: Path

    def raw(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self) -> set[str]:
        """Every key under users/ (session records come and go as the turn runs)."""
        return {o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="users/")
                for o in page.get("Contents", [])}


@pytest.fixture
def production(world, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Production]:  # type: ignore[no-untyped-def]
    bucket = f"prod-{uuid.uuid4().hex[:10]}"
    s3 = create_bucket(storage_settings(moto_endpoint, bucket))
    with FakeCloudflare(api_token=CF_TOKEN, account_id=ACCOUNT) as cloudflare, \
            running_sandbox_host(tmp_path / "host") as (host_url, host_token):
        for name, value in {
            "ENVIRONMENT": "production", "API_KEY": API_KEY, "S3_ENDPOINT_URL": moto_endpoint, "R2_BUCKET": bucket,
            "R2_ACCOUNT_ID": ACCOUNT, "R2_ACCESS_KEY_ID": "parent-key-id", "R2_SECRET_ACCESS_KEY": BUCKET_WIDE_SECRET,
            "S3_REGION": "auto", "CLOUDFLARE_API_TOKEN": CF_TOKEN, "CLOUDFLARE_API_BASE_URL": cloudflare.base_url,
            "SESSION_LIFETIME_SECONDS": "3600", "SANDBOX_URL": host_url, "SANDBOX_TOKEN": host_token,
        }.items():
            monkeypatch.setenv(name, value)
        world.http.headers["Authorization"] = f"Bearer {API_KEY}"
        try:
            yield Production(world, cloudflare, s3, bucket, tmp_path / "host")
        finally:
            for session in ("sess-prod", "sess-refused"):  # unmounts, so no s3fs outlives the test
                world.http.delete(f"/sandbox/{session}")


def test_the_agent_cannot_see_or_rewrite_settings_or_conversations(production: Production) -> None:
    http = production.world.http
    assert http.post("/users/alice/skills", json={"name": "debugging.md", "content": "# Debugging\n\nRead the logs."}).status_code == 200
    assert http.put("/users/alice/settings", json=SETTINGS).status_code == 200
    assert http.post("/users/alice/conversations", json={"conversationId": "secret-conv", "messages": [
        {"role": "user", "content": SECRET_TEXT}]}).status_code == 200
    before = {key: production.raw(key) for key in production.keys()}
    # The upload's catalog entry exists (setup writes the bundle and the folded catalog): all must stay out of sight.
    assert "users/alice/cache/skill-catalog/debugging.md.json" in before

    setup = http.post("/setup/sess-prod?userId=alice").json()
    assert setup["setupMethod"] == "r2_mount", setup
    [issued] = production.cloudflare.issued
    assert issued.request == {"bucket": production.bucket, "parentAccessKeyId": "parent-key-id",
                              "permission": "object-read-write", "ttlSeconds": 3600, "prefixes": ["users/alice/skills/"]}

    look = ("find /workspace /tmp /run /home /root /mnt /media /opt /srv /var -name preferences.json -o "
            "-name skills-bundle.json -o -name 'skill-catalog*' -o -name 'secret-conv*' -o -name session.json 2>/dev/null; "
            f"grep -rls {SECRET_TEXT} /workspace /tmp 2>/dev/null; grep -rls SETTINGS-MARKER /workspace /tmp 2>/dev/null; "
            "find /workspace/.claude -type f | sort; echo END-OF-LOOK")
    rewrite = ('d=$(dirname "$(find /workspace/.claude -name debugging.md | head -1)"); '
               'for t in /workspace/.claude/settings "$d/settings" "$d/../settings" "$d/../../settings"; do '
               'mkdir -p "$t" 2>/dev/null; echo \'{"allowNetwork": true}\' > "$t/preferences.json" 2>/dev/null; done; '
               'for t in /workspace/.claude/conversations "$d/../conversations" "$d/conversations"; do '
               'mkdir -p "$t" 2>/dev/null; echo \'{"conversationId": "secret-conv", "messages": []}\' > "$t/secret-conv.json" 2>/dev/null; done; '
               'echo "# planted by the agent" > "$d/agent-wrote.md"; echo END-OF-REWRITE')
    production.world.fake.script(Reply([ToolUse("bash", {"command": look})]), Reply([ToolUse("bash", {"command": rewrite})]),
                                 Reply([Text("done")]))
    with connect(f"{setup['websocketUrl']}&token={setup['token']}") as ws:
        ws.send(json.dumps({"action": "message", "prompt": "look around"}))
        frames = receive_until(ws, "result", timeout=60)
    results = [f["content"] for f in frames if f["event"] == "tool_result"]
    assert len(results) == 2 and "END-OF-LOOK" in results[0] and "END-OF-REWRITE" in results[1], results
    seen = results[0]
    for hidden in ("preferences.json", "skills-bundle.json", "skill-catalog", "secret-conv", "session.json", SECRET_TEXT,
                   "SETTINGS-MARKER"):
        assert hidden not in seen, (hidden, seen)
    assert "debugging.md" in seen  # the skills themselves are there

    after = {key: production.raw(key) for key in production.keys()}
    for key in ("users/alice/settings/preferences.json", "users/alice/conversations/secret-conv.json",
                "users/alice/cache/skill-catalog/debugging.md.json"):
        assert after[key] == before[key], key
    # The server's own writes: the conversation, the turn's usage record it meters, and what setup
    # derives from the skills (the bundle and the folded catalog).
    by_server = {"users/alice/conversations/sess-prod.json", "users/alice/cache/skills-bundle.json",
                 "users/alice/cache/skill-catalog.json"}
    usage_day = f"users/alice/usage/{datetime.now(timezone.utc):%Y-%m-%d}/sess-prod/"
    written_by_agent = {k for k in set(after) - set(before) - by_server if not k.startswith(usage_day)}
    # Whatever the agent wrote landed among the user's skills (the mount is live), nowhere else.
    assert "users/alice/skills/agent-wrote.md" in written_by_agent
    assert all(k.startswith("users/alice/skills/") for k in written_by_agent), written_by_agent
    assert http.get("/users/alice/settings").json()["settings"]["allowNetwork"] is False

    # What the sandbox host holds for this session: temporary keys only, in s3fs's environment.
    leaked = [p for p in production.host_root.rglob("*") if p.is_file() and BUCKET_WIDE_SECRET.encode() in _read(p)]
    assert not leaked
    s3fs = _s3fs_environment(production.host_root)
    assert s3fs.get("AWS_ACCESS_KEY_ID") == issued.access_key_id and s3fs.get("AWS_SESSION_TOKEN") == issued.session_token
    assert BUCKET_WIDE_SECRET not in json.dumps(s3fs)


def test_a_new_setup_mounts_again_with_fresh_credentials(production: Production) -> None:
    http = production.world.http
    assert http.post("/users/alice/skills", json={"name": "debugging.md", "content": "# Debugging\n\nRead the logs."}).status_code == 200
    assert http.post("/setup/sess-prod?userId=alice").json()["setupMethod"] == "r2_mount"
    again = http.post("/setup/sess-prod?userId=alice").json()
    assert again["setupMethod"] == "r2_mount", again  # not stacked on (or reloaded through) the old mount
    first, second = production.cloudflare.issued
    assert first.session_token != second.session_token
    assert _s3fs_environment(production.host_root).get("AWS_SESSION_TOKEN") == second.session_token


def test_refused_temporary_credentials_fall_back_to_copies_never_to_the_server_s_keys(
        production: Production, monkeypatch: pytest.MonkeyPatch) -> None:
    http = production.world.http
    assert http.post("/users/alice/skills", json={"name": "debugging.md", "content": "# Debugging\n\nRead the logs."}).status_code == 200
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "a-wrong-token")
    setup = http.post("/setup/sess-refused?userId=alice").json()
    assert setup["setupMethod"] == "r2_load_fallback"
    assert "Temporary credentials" in setup["fallbackReason"] and "CLOUDFLARE_API_TOKEN" in setup["fallbackReason"]
    assert setup["skillsLoaded"] == ["/workspace/.claude/skills/debugging.md"]
    assert production.cloudflare.refused == ["Authentication error"] and _s3fs_environment(production.host_root) == {}


def test_a_mounted_session_is_never_reloaded_through_its_old_mount(production: Production, monkeypatch: pytest.MonkeyPatch) -> None:
    http = production.world.http
    assert http.post("/users/alice/skills", json={"name": "debugging.md", "content": "# Debugging\n\nRead the logs."}).status_code == 200
    assert http.post("/setup/sess-prod?userId=alice").json()["setupMethod"] == "r2_mount"
    skills_before = {k: production.raw(k) for k in production.keys() if k.startswith("users/alice/skills/")}
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "a-wrong-token")
    again = http.post("/setup/sess-prod?userId=alice")
    assert again.status_code == 503 and again.json()["code"] == "mount_credentials_unavailable", again.text
    assert {k: production.raw(k) for k in production.keys() if k.startswith("users/alice/skills/")} == skills_before


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _s3fs_environment(root: Path) -> dict[str, str]:
    """The environment of the s3fs process mounting under `root` ({} when there is none)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not argv or Path(argv[0].decode()).name != "s3fs" or str(root).encode() not in b" ".join(argv):
                continue
            pairs = (item.decode().partition("=") for item in (proc / "environ").read_bytes().split(b"\0") if item)
            return {k: v for k, _, v in pairs}
        except OSError:
            continue
    return {}
