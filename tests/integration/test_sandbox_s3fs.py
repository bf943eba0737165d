"""A real s3fs mount of one user's prefix of a moto-server bucket."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import MountError, MountSpec, SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider
from chalicelib.storage.s3 import build_s3_client
from tests.support.fault_proxy import FaultProxy
from tests.support.s3 import create_bucket, storage_settings

FUSE_REASON = None
if not os.path.exists("/dev/fuse"):
    FUSE_REASON = "/dev/fuse is not available on this machine, so FUSE mounts cannot be tested"
elif shutil.which("s3fs") is None:
    FUSE_REASON = "s3fs is not installed (apt-get install s3fs)"
elif shutil.which("bwrap") is None:
    FUSE_REASON = "bubblewrap is not installed"
elif os.geteuid() != 0:
    FUSE_REASON = "mounting with s3fs needs root here"

pytestmark = [pytest.mark.slow, pytest.mark.fuse, pytest.mark.skipif(FUSE_REASON is not None, reason=FUSE_REASON or "")]


@pytest.fixture
def bucket(moto_endpoint: str) -> Iterator[tuple[str, str]]:
    name = f"mount-{uuid.uuid4().hex[:10]}"
    client = create_bucket(storage_settings(moto_endpoint, name))
    client.put_object(Bucket=name, Key="users/alice/skills/debugging.md", Body=b"# Alice debugging")
    client.put_object(Bucket=name, Key="users/alice/skills/pdf-tools/SKILL.md", Body=b"---\nname: pdf-tools\ndescription: d\n---\n")
    client.put_object(Bucket=name, Key="users/bob/skills/bob-secret.md", Body=b"# Bob only")
    client.put_object(Bucket=name, Key="users/alice/settings/preferences.json", Body=b'{"allowNetwork": false}')
    yield name, moto_endpoint


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalSandboxProvider]:
    p = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sandboxes")}))
    yield p
    for sid in p.sessions():
        p.destroy(sid)


def spec(bucket: str, endpoint: str, prefix: str = "users/alice/skills/", secret: str = "testing-secret-9931") -> MountSpec:
    return MountSpec(kind="s3", bucket=bucket, prefix=prefix, endpoint_url=endpoint, region="us-east-1",
                     access_key_id="testing", secret_access_key=secret)  # type: ignore[arg-type]


def test_mounts_only_the_users_prefix(provider: LocalSandboxProvider, bucket: tuple[str, str]) -> None:
    name, endpoint = bucket
    sandbox = provider.create("s3-1", SandboxOptions())
    assert provider.supports_mount(spec(name, endpoint))
    seen = sandbox.mount_bucket(spec(name, endpoint))
    assert "/workspace/.claude/skills/debugging.md" in seen
    assert "/workspace/.claude/skills/pdf-tools/SKILL.md" in seen
    assert sandbox.exec("cat /workspace/.claude/skills/debugging.md").stdout == "# Alice debugging"
    everything = sandbox.exec("find / -name '*.md' -not -path '/proc/*' -not -path '/usr/*' 2>/dev/null").stdout
    assert "bob-secret" not in everything
    # Skills only: the user's settings (allowNetwork) are not in the sandbox to be rewritten.
    assert "preferences.json" not in sandbox.exec("find /workspace 2>&1").stdout
    # The agent (its own uid) can write its skills back.
    wrote = sandbox.exec("echo '# new' > /workspace/.claude/skills/new.md && cat /workspace/.claude/skills/new.md")
    assert wrote.stdout == "# new\n", wrote
    # The credentials stay outside: not in the environment, not under /workspace.
    leak = sandbox.exec("env; grep -rs testing-secret-9931 /workspace /tmp /run /etc 2>/dev/null").stdout
    assert "testing-secret-9931" not in leak
    provider.destroy("s3-1")
    assert not (sandbox.root / "s3fs.passwd").exists()


def test_a_failing_mount_raises_and_is_not_used(provider: LocalSandboxProvider, bucket: tuple[str, str]) -> None:
    name, _ = bucket
    sandbox = provider.create("s3-2", SandboxOptions())
    with pytest.raises(MountError):
        sandbox.mount_bucket(spec(name, "http://127.0.0.1:9"))
    assert sandbox.claude_source is None
    assert "No such file" in sandbox.exec("ls /workspace/.claude 2>&1").stdout


def test_an_empty_prefix_raises(provider: LocalSandboxProvider, bucket: tuple[str, str]) -> None:
    name, endpoint = bucket
    with pytest.raises(MountError):
        provider.create("s3-3", SandboxOptions()).mount_bucket(spec(name, endpoint, prefix="users/nobody/"))


def test_verifying_a_mount_costs_the_same_at_any_skill_count(provider: LocalSandboxProvider, bucket: tuple[str, str]) -> None:
    """With what storage lists (`expect`), the mount is checked by one listed file, not walked:
    s3fs HEADs every file a walk meets, which made production setups grow with the skills."""
    name, endpoint = bucket
    client = build_s3_client(storage_settings(endpoint, name), boto3.session.Session())
    for i in range(100):
        client.put_object(Bucket=name, Key=f"users/many/skills/skill-{i:03d}.md", Body=b"# skill")
    client.put_object(Bucket=name, Key="users/one/skills/skill-000.md", Body=b"# skill")
    requests: dict[int, int] = {}
    with FaultProxy(endpoint) as proxy:
        for count, user in ((1, "one"), (100, "many")):
            listed = tuple(f"skill-{i:03d}.md" for i in range(count))
            sandbox = provider.create(f"s3-count-{count}", SandboxOptions())
            before = len(proxy.seen())
            seen = sandbox.mount_bucket(spec(name, proxy.url, prefix=f"users/{user}/skills/").model_copy(update={"expect": listed}))
            requests[count] = len(proxy.seen()) - before
            assert seen == [f"/workspace/.claude/skills/{rel}" for rel in listed]
            # The files are there for the agent all the same.
            assert sandbox.exec("ls /workspace/.claude/skills | wc -l").stdout.strip() == str(count)
    print(f"\ns3fs requests to verify the mount: {requests[1]} with 1 skill, {requests[100]} with 100")
    assert requests[100] == requests[1], requests


def test_a_mount_that_does_not_show_a_listed_file_is_not_used(provider: LocalSandboxProvider, bucket: tuple[str, str]) -> None:
    name, endpoint = bucket
    sandbox = provider.create("s3-missing", SandboxOptions())
    with pytest.raises(MountError, match="does not show"):
        sandbox.mount_bucket(spec(name, endpoint).model_copy(update={"expect": ("not-in-storage.md",)}))
    assert sandbox.claude_source is None
