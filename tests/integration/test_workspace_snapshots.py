"""Incremental workspace snapshots against S3 (moto server over HTTP): a save costs what changed,
garbage goes with the root that stops referencing it, the owner is in every key, today's .tar.gz
snapshots restore and are replaced by the first save, two saves racing for the root both land
consistently, and orphans of a cut save are swept."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.sandbox import archive
from chalicelib.sandbox import snapshot_format as fmt
from chalicelib.services import workspace_snapshots as ws_module
from chalicelib.services.workspace_snapshots import (
    WorkspaceSnapshots,
    manifest_key,
    objects_prefix,
    snapshot_key,
    stored_bytes,
)
from chalicelib.storage.base import ObjectStore
from chalicelib.storage.factory import build_store
from chalicelib.storage.listing import iter_all
from tests.support.s3 import create_bucket, storage_settings
from tests.unit.test_workspace_incremental import Box


class Counting:
    """The real store, with every PUT's key and size noted (and a hook run before the Nth root PUT)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.puts: list[tuple[str, int]] = []
        self.before_root: Callable[[], None] | None = None

    def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        if key.endswith(".manifest.json") and self.before_root is not None:
            hook, self.before_root = self.before_root, None
            hook()
        self.puts.append((key, len(data)))
        return self.store.put(key, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def snapshots(moto_endpoint: str, tmp_path: Path) -> Iterator[tuple[WorkspaceSnapshots, Counting]]:
    bucket = f"snap-{uuid.uuid4().hex[:8]}"
    create_bucket(storage_settings(moto_endpoint, bucket))
    settings = Settings.from_env({"S3_ENDPOINT_URL": moto_endpoint, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing",
                                  "R2_SECRET_ACCESS_KEY": "testing", "S3_REGION": "auto",
                                  "DATA_DIR": str(tmp_path / "data"), "WORKSPACE_SNAPSHOT_MB": "16"})
    store = Counting(build_store(settings))
    yield WorkspaceSnapshots(settings, store), store  # type: ignore[arg-type]


def folder(tmp_path: Path, name: str, files: dict[str, bytes]) -> Box:
    root = tmp_path / name
    root.mkdir()
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return Box(root)


def content(box: Box) -> dict[str, bytes]:
    root = Path(os.readlink(f"/proc/self/fd/{box.files.root_fd}"))
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def objects(store: Counting, session: str, user: str) -> set[str]:
    prefix = objects_prefix(session, user)
    return {o.key[len(prefix):] for o in iter_all(store.store, prefix)}


def root_objects(store: Counting, session: str, user: str) -> set[str]:
    return fmt.decode_root(store.store.get(manifest_key(session, user)).body).objects()


def test_a_save_costs_what_changed_and_leaves_no_garbage(snapshots: tuple[WorkspaceSnapshots, Counting], tmp_path: Path) -> None:
    service, store = snapshots
    box = folder(tmp_path, "ws", {f"src/m{i:03d}/f.py": os.urandom(3000) for i in range(400)})
    first = service.save("s1", "alice", box)
    assert first.outcome == "written" and first.size > 1_200_000
    store.puts.clear()
    assert service.save("s1", "alice", box).outcome == "unchanged" and store.puts == []

    (Path(os.readlink(f"/proc/self/fd/{box.files.root_fd}")) / "src/m123/f.py").write_bytes(b"one line changed")
    store.puts.clear()
    changed = service.save("s1", "alice", box)
    assert changed.outcome == "written" and changed.size < 12_000, store.puts
    assert [k for k, _ in store.puts][-1] == manifest_key("s1", "alice")  # the root is written last
    assert 2 <= len(store.puts) <= 4  # one pack, the segment(s) holding the entry, the root
    assert objects(store, "s1", "alice") == root_objects(store, "s1", "alice")  # garbage deleted at once
    assert stored_bytes(store.store, "s1", "alice") == sum(
        o.size for o in iter_all(store.store, "sessions/s1/workspace/"))

    again = folder(tmp_path, "again", {})
    assert service.restore("s1", "alice", again) == 400
    assert content(again) == content(box)


def test_the_owner_is_in_every_key(snapshots: tuple[WorkspaceSnapshots, Counting], tmp_path: Path) -> None:
    service, store = snapshots
    service.save("shared", "alice", folder(tmp_path, "a", {"alice.txt": b"alice's"}))
    # The id destroyed and set up again by bob: nothing of alice's is restored into his sandbox.
    bob = folder(tmp_path, "b", {})
    assert service.restore("shared", "bob", bob) is None and content(bob) == {}
    bob_files = folder(tmp_path, "b2", {"bob.txt": b"bob's"})
    service.save("shared", "bob", bob_files)
    assert service.delete_for_user("bob") > 0
    assert objects(store, "shared", "bob") == set()
    alice = folder(tmp_path, "a2", {})
    assert service.restore("shared", "alice", alice) == 1 and content(alice) == {"alice.txt": b"alice's"}
    service.delete_for_user("alice")
    assert list(iter_all(store.store, "sessions/shared/")) == [] and list(iter_all(store.store, "workspace-owners/")) == []


def test_an_archive_of_the_earlier_layout_restores_and_the_first_save_replaces_it(
        snapshots: tuple[WorkspaceSnapshots, Counting], tmp_path: Path) -> None:
    service, store = snapshots
    old = tmp_path / "old"
    (old / "docs").mkdir(parents=True)
    (old / "docs/readme.md").write_text("from the tar.gz days")
    store.store.put(snapshot_key("legacy", "alice"), archive.pack(old, 2**20), content_type="application/gzip")
    store.store.put("workspace-owners/alice/legacy", b"")
    assert [e.path for e in service.entries("legacy", "alice") or []] == ["docs", "docs/readme.md"]
    assert service.read("legacy", "alice", "docs/readme.md") == b"from the tar.gz days"
    assert stored_bytes(store.store, "legacy", "alice") > 0
    box = folder(tmp_path, "new", {})
    assert service.restore("legacy", "alice", box) == 1
    (Path(os.readlink(f"/proc/self/fd/{box.files.root_fd}")) / "more.txt").write_text("after")
    assert service.save("legacy", "alice", box).outcome == "written"
    keys = {o.key for o in iter_all(store.store, "sessions/legacy/")}
    assert snapshot_key("legacy", "alice") not in keys and manifest_key("legacy", "alice") in keys
    assert service.read("legacy", "alice", "docs/readme.md") == b"from the tar.gz days"


def test_an_upload_into_a_snapshot_costs_the_file(snapshots: tuple[WorkspaceSnapshots, Counting], tmp_path: Path) -> None:
    service, store = snapshots
    service.save("up", "alice", folder(tmp_path, "ws", {f"d{i // 50}/f{i}.bin": os.urandom(2000) for i in range(600)}))
    body = os.urandom(256 * 1024)
    store.puts.clear()
    assert service.edit("up", "alice", "uploads/new.bin", body)
    written = sum(n for _, n in store.puts)
    assert len(body) < written < len(body) + 12_000, store.puts
    assert service.read("up", "alice", "uploads/new.bin") == body
    listed = {e.path: e for e in service.entries("up", "alice") or []}
    assert listed["uploads"].kind == "dir" and listed["uploads/new.bin"].size == len(body)
    with pytest.raises(Exception, match="symbolic link|not a folder"):
        service.edit("up", "alice", "uploads/new.bin/inside", b"x")
    assert service.edit("up", "alice", "uploads/new.bin", None)
    assert objects(store, "up", "alice") == root_objects(store, "up", "alice")  # its pack went with it
    assert not service.edit("up", "alice", "uploads/new.bin", None)
    # An upload into a session with no snapshot yet starts one.
    assert service.edit("fresh", "alice", "a.txt", b"first")
    assert service.read("fresh", "alice", "a.txt") == b"first"


def test_two_saves_racing_for_the_root_land_consistently(snapshots: tuple[WorkspaceSnapshots, Counting], tmp_path: Path) -> None:
    service, store = snapshots
    box = folder(tmp_path, "ws", {"a.txt": b"one", "b.txt": b"two"})
    service.save("race", "alice", box)
    root = Path(os.readlink(f"/proc/self/fd/{box.files.root_fd}"))
    (root / "a.txt").write_bytes(b"first change")
    other = folder(tmp_path, "other", {"c.txt": b"another sandbox of the session"})

    # Between this save's HEAD and its root, another sandbox of the session saves: the If-Match
    # fails, and the save makes its delta again against the root that won.
    store.before_root = lambda: service.save("race", "alice", other)
    store.puts.clear()
    assert service.save("race", "alice", box).outcome == "written"
    roots = [k for k, _ in store.puts if k == manifest_key("race", "alice")]
    assert len(roots) == 3  # the other save's, this one's refused, this one's again
    assert root_objects(store, "race", "alice") <= objects(store, "race", "alice")
    restored = folder(tmp_path, "restored", {})
    service.restore("race", "alice", restored)
    assert content(restored) == {"a.txt": b"first change", "b.txt": b"two"}


def test_orphans_of_a_cut_save_are_swept_at_a_restore_once_old(snapshots: tuple[WorkspaceSnapshots, Counting],
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service, store = snapshots
    service.save("orph", "alice", folder(tmp_path, "ws", {"a.txt": b"kept"}))
    lineage = fmt.decode_root(store.store.get(manifest_key("orph", "alice")).body).lineage
    orphan = objects_prefix("orph", "alice") + f"{lineage}/p-{'0' * 32}"
    store.store.put(orphan, b"a save cut before its root")
    service.restore("orph", "alice", folder(tmp_path, "r1", {}))
    assert orphan in {o.key for o in iter_all(store.store, "sessions/orph/")}  # young: maybe a save in flight
    monkeypatch.setattr(ws_module, "ORPHAN_AGE", timedelta(0))
    service.restore("orph", "alice", folder(tmp_path, "r2", {}))
    assert objects(store, "orph", "alice") == root_objects(store, "orph", "alice")


def test_a_damaged_snapshot_is_set_aside_and_still_read(snapshots: tuple[WorkspaceSnapshots, Counting], tmp_path: Path) -> None:
    service, store = snapshots
    service.save("dmg", "alice", folder(tmp_path, "ws", {"a.txt": b"kept", "big.bin": os.urandom(50_000)}))
    entries = fmt.read_entries(fmt.decode_root(store.store.get(manifest_key("dmg", "alice")).body),
                               {k: store.store.get(objects_prefix("dmg", "alice") + k).body
                                for k in root_objects(store, "dmg", "alice") if "/s-" in k})
    big_pack = next(e.pack for e in entries if e.rel == "big.bin")
    store.store.delete(objects_prefix("dmg", "alice") + (big_pack or ""))
    target = folder(tmp_path, "t", {"mine.txt": b"untouched"})
    with pytest.raises(fmt.SnapshotDamaged):
        service.restore("dmg", "alice", target)
    assert content(target) == {"mine.txt": b"untouched"}
    service.set_aside("dmg", "alice")
    assert service.entries("dmg", "alice") is None and service.has_unrestored("dmg", "alice")
    assert {e.path for e in service.entries("dmg", "alice", unrestored=True) or []} == {"a.txt", "big.bin"}
    with pytest.raises(fmt.SnapshotDamaged):  # its pack went: the rest of the snapshot is still listed
        service.read("dmg", "alice", "a.txt", unrestored=True)
    assert service.edit("dmg", "alice", "big.bin", None, unrestored=True)
    assert {e.path for e in service.entries("dmg", "alice", unrestored=True) or []} == {"a.txt"}
