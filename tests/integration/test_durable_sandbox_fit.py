"""Durable workspaces on the isolated sandbox (the merge of issue 15 with issue 10 and 11):
restored files belong to the session's uid and stay usable inside the sandbox, a snapshot larger
than the session's tmpfs (SANDBOX_DISK_MB) is refused before anything is removed, the save after
a turn rides out a storage outage like the turn's other writes, and the local idle reaper saves
a workspace before destroying it (and keeps it while storage is down).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxError, SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandbox, LocalSandboxProvider
from devserver.reaper import IdleReaper
from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.fault_proxy import FaultRule
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event
from tests.support.snapshots import manifest_path, snapshot_files, write_snapshot

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

CAP = 64 * 2**20


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalSandboxProvider]:
    p = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sb"), "DATA_DIR": str(tmp_path),
                                                "SANDBOX_DISK_MB": "4"}))
    yield p
    for sid in p.sessions():
        p.destroy(sid)


def carry(first: LocalSandbox, layout: str) -> Callable[[LocalSandbox], int]:
    """Save `first`'s workspace in one layout; return what restores it into another sandbox."""
    if layout == "archive":  # today's .tar.gz snapshots stay restorable
        data = first.export_workspace(CAP)
        assert data is not None
        return lambda into: into.import_workspace(data, CAP)
    delta = first.snapshot_delta(CAP, None)
    assert delta is not None
    return lambda into: into.import_snapshot(delta.root, delta.objects, CAP)


@pytest.mark.parametrize("layout", ["incremental", "archive"])
def test_restored_files_belong_to_the_session_uid_and_stay_usable(provider: LocalSandboxProvider, layout: str) -> None:
    first = provider.create("own-1", SandboxOptions())
    made = first.exec("mkdir -p src/deep && echo one > src/deep/a.txt && chmod 640 src/deep/a.txt && ln -s src/deep/a.txt link")
    assert made.exit_code == 0, made.stdout
    restore = carry(first, layout)
    provider.destroy("own-1")

    again = provider.create("own-1", SandboxOptions())
    assert restore(again) == 1
    if again.uid is not None:
        owners = set()
        for folder, dirs, files in os.walk(again.workspace):
            for name in dirs + files:
                info = os.lstat(os.path.join(folder, name))
                owners.add((info.st_uid, info.st_gid))
        assert owners == {(again.uid, again.uid)}
    # The sandbox's own user can change, add and delete what was restored.
    used = again.exec("echo two >> src/deep/a.txt && touch src/deep/new && rm link && cat src/deep/a.txt && stat -c %a src/deep/a.txt")
    assert used.exit_code == 0, used.stdout
    assert used.stdout.split() == ["one", "two", "640"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs per session needs root")
def test_a_snapshot_larger_than_the_disk_is_refused_before_anything_is_removed(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create("full-1", SandboxOptions())
    assert sandbox.disk_limited
    sandbox.write_file("/workspace/keep.txt", "still here")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        blob = os.urandom(6 * 2**20)  # random: the archive is as large as the file, past a 4 MB disk
        info = tarfile.TarInfo("big.bin")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(SandboxError, match="SANDBOX_DISK_MB"):
        sandbox.import_workspace(out.getvalue(), CAP)
    stored: dict[str, bytes] = {}
    write_snapshot(stored.__setitem__, "full-1", "alice", {"big.bin": blob})
    objects = {k.rsplit("/alice/", 1)[1]: v for k, v in stored.items() if "/alice/" in k}
    with pytest.raises(SandboxError, match="SANDBOX_DISK_MB"):
        sandbox.import_snapshot(stored[manifest_path("full-1", "alice")], objects, CAP)
    assert sandbox.read_file("/workspace/keep.txt") == b"still here"
    assert sandbox.exec("ls").stdout.split() == ["keep.txt"]


@pytest.mark.parametrize("layout", ["incremental", "archive"])
def test_sparse_files_that_fit_the_disk_are_restored_as_sparse(provider: LocalSandboxProvider, layout: str) -> None:
    # Issue 24: two 6 MiB sparse files in a 4 MiB workspace saved fine and then never restored
    # (their length was counted against the disk, not what they take), so the session was bricked.
    first = provider.create("sparse-1", SandboxOptions())
    made = first.exec("truncate -s 6M a.bin b.bin && printf 'head' | dd of=a.bin conv=notrunc 2>/dev/null && "
                      "printf 'tail' | dd of=b.bin bs=1 seek=6291452 conv=notrunc 2>/dev/null && du -sk . && md5sum a.bin b.bin")
    assert made.exit_code == 0, made
    restore = carry(first, layout)
    provider.destroy("sparse-1")
    second = provider.create("sparse-1", SandboxOptions())
    assert restore(second) == 2
    again = second.exec("du -sk .; md5sum a.bin b.bin; stat -c '%s' a.bin b.bin")
    assert again.stdout.split("\n", 1)[1] == made.stdout.split("\n", 1)[1] + "6291456\n6291456\n", (made, again)
    assert int(again.stdout.split()[0]) <= 64  # KiB in use: holes stayed holes
    assert second.exec("head -c 4 a.bin; tail -c 4 b.bin").stdout == "headtail"


def archived(api: Any, session: str) -> dict[str, bytes]:
    return snapshot_files(api.raw, session, "alice")


def test_the_snapshot_after_a_turn_rides_out_a_storage_outage(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "snapout")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "snapout", "token": token}))
    fake.script(Reply([ToolUse("bash", {"command": "echo kept > /workspace/made.txt"})]), Reply([Text("done")]))
    # More failures in a row than botocore's own 4 attempts ride out: the runner's backoff must.
    proxy.add(FaultRule("PUT", r"/workspace/alice\.manifest\.json", action="status", status=503, times=5))
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go"})))
    frames = management.wait_for("c1", "result", timeout=90)
    dispatcher.join(60)
    assert proxy.fired("status") == 5
    assert frames[-1]["stopReason"] == "end_turn"
    assert not [f for f in management.sent.get("c1", []) if f["event"] == "error"]
    assert archived(api, "snapout")["made.txt"] == b"kept\n"


def test_the_local_reaper_saves_an_idle_workspace_and_keeps_it_while_storage_is_down(faulty) -> None:  # type: ignore[no-untyped-def]
    from chalicelib.container import get_container
    from tests.support.api import ROOT

    client, management, fake, dispatcher, proxy, api = faulty
    setup_session(client, "idle")
    stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
    container = get_container(Settings.from_env({**os.environ, **stage_env}))
    # A background process the agent left running wrote after the last turn's save.
    container.sandboxes.get("idle").write_file("/workspace/late.txt", "written after the turn")
    reaper = IdleReaper(lambda: container.sandboxes, idle_seconds=0.2, before_destroy=container.sessions.save_workspace)
    time.sleep(0.4)

    proxy.add(FaultRule("PUT", r"/workspace/alice\.manifest\.json", action="status", status=503, times=None))
    assert reaper.reap_once() == []  # storage is down: the files would be lost, so the sandbox stays
    assert "idle" in container.sandboxes.sessions()

    proxy.clear()
    time.sleep(0.4)
    assert reaper.reap_once() == ["idle"]
    assert "idle" not in container.sandboxes.sessions()
    assert archived(api, "idle")["late.txt"] == b"written after the turn"


def test_a_repaired_turn_saves_the_files_its_dead_runner_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner killed mid-turn never saved the workspace; the runner that repairs the turn saves it
    once the queue is empty."""
    from chalicelib.container import get_container
    from tests.integration.test_turn_takeover import stage_dead_runner
    from tests.support.api import ROOT

    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "dead3")
        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        container = get_container(Settings.from_env({**os.environ, **stage_env}))
        container.sandboxes.get("dead3").write_file("/workspace/job/output.txt", "made by the dead turn")
        stage_dead_runner(tmp_path / "data", "dead3", lease_left=-1)
        client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "dead3", "token": token}))
        client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "resume", "afterSeq": 4})))
        deadline = time.monotonic() + 30
        while not any(f["event"] == "result" for f in management.sent.get("c1", [])):
            assert time.monotonic() < deadline, management.sent.get("c1")
            time.sleep(0.05)
        dispatcher.join(30)
    saved = snapshot_files(lambda key: (tmp_path / "data" / key).read_bytes(), "dead3", "alice")
    assert saved["job/output.txt"] == b"made by the dead turn"
