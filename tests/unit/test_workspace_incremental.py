"""Incremental workspace snapshots, the sandbox's side: exact round trips, a save that costs what
changed, links never followed (even when swapped in after the walk), and hostile or damaged
snapshots refused before anything in the workspace is removed."""

from __future__ import annotations

import json
import os
import resource
import zlib
from pathlib import Path

import pytest

from chalicelib.sandbox import incremental
from chalicelib.sandbox import snapshot_format as fmt
from chalicelib.sandbox.archive import WorkspaceArchiveMixin
from chalicelib.sandbox.base import SandboxError, SandboxPathError, SnapshotTooLarge
from chalicelib.sandbox.incremental import IncrementalSnapshotMixin
from chalicelib.sandbox.paths import DirTree, remove_path
from tests.unit.test_workspace_archive import _deep, workspace

CAP = 10 * 2**20


class Box(WorkspaceArchiveMixin, IncrementalSnapshotMixin):
    """A workspace folder with the sandbox's snapshot methods (LocalSandbox without bwrap)."""

    def __init__(self, path: Path) -> None:
        self.files = DirTree.open(str(path))
        self.disk_limited = False

    def _alive(self) -> None:
        return None


def stored_after(delta: fmt.SnapshotDelta, bucket: dict[str, bytes]) -> dict[str, bytes]:
    """The objects a save leaves: the new ones written, the obsolete ones deleted."""
    bucket.update(delta.objects)
    for key in delta.obsolete:
        bucket.pop(key)
    return bucket


def tree(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            info = path.lstat()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path), 0)
            elif path.is_dir():
                out[rel] = ("dir", "", info.st_mode & 0o777)
            elif path.is_file():
                out[rel] = ("file", path.read_bytes(), info.st_mode & 0o777)
    return out


def test_round_trip_is_exact_and_the_restored_workspace_is_unchanged(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    (ws / "empty.txt").write_bytes(b"")
    (ws / os.fsdecode(b"bad\xff")).write_bytes(b"raw name")
    box = Box(ws)
    delta = box.snapshot_delta(CAP, None)
    assert delta is not None and delta.base is None
    assert not any(b"skill" in zlib.decompress(v) for k, v in delta.objects.items() if "/p-" in k)
    target = tmp_path / "target"
    (target / ".claude/skills").mkdir(parents=True)
    (target / ".claude/skills/kept.md").write_text("loaded by setup")
    (target / "stale.txt").write_text("from before")
    restored = Box(target)
    assert restored.import_snapshot(delta.root, delta.objects, CAP) == 5
    assert (target / ".claude/skills/kept.md").read_text() == "loaded by setup"
    expected = {k: v for k, v in tree(ws).items() if not k.startswith(".claude/skills") and k != "pipe"}
    assert {k: v for k, v in tree(target).items() if not k.startswith(".claude/skills")} == expected
    assert (target / "run.sh").stat().st_mtime_ns == (ws / "run.sh").stat().st_mtime_ns
    # Restored, then saved: the sandbox knows it matches the stored root, so nothing is written.
    assert restored.snapshot_unchanged() == [delta.root_md5]
    assert restored.snapshot_delta(CAP, delta.root_md5) is None


def test_a_changed_save_writes_only_what_changed(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    for i in range(3000):
        folder = ws / f"pkg{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:04d}.txt").write_bytes(os.urandom(2000))
    box = Box(ws)
    first = box.snapshot_delta(CAP, None)
    assert first is not None
    bucket = stored_after(first, {})
    assert box.snapshot_unchanged() == [first.root_md5] and box.snapshot_delta(CAP, first.root_md5) is None

    (ws / "pkg07/f0700.txt").write_bytes(b"changed")
    second = box.snapshot_delta(CAP, first.root_md5)
    assert second is not None and second.base == first.root_md5
    packs = [k for k in second.objects if "/p-" in k]
    segments = [k for k in second.objects if "/s-" in k]
    assert len(packs) == 1 and zlib.decompress(second.objects[packs[0]]) == b"changed"
    assert 1 <= len(segments) <= 2 and sum(len(v) for v in second.objects.values()) < 16_000
    assert [k for k in second.obsolete if "/s-" in k] and not [k for k in second.obsolete if "/p-" in k]
    bucket = stored_after(second, bucket)
    assert set(bucket) == fmt.decode_root(second.root).objects()

    # A new file shifts no other segment (content-defined cuts); a touch packs nothing again.
    (ws / "pkg00/zz-new.txt").write_bytes(b"new")
    os.utime(ws / "pkg15/f1500.txt", ns=(1, 1))
    third = box.snapshot_delta(CAP, second.root_md5)
    assert third is not None
    packed = [zlib.decompress(v) for k, v in third.objects.items() if "/p-" in k]
    assert packed == [b"new"] and len([k for k in third.objects if "/s-" in k]) <= 4

    # A root this sandbox never knew: everything is packed again, from nothing.
    fresh = box.snapshot_delta(CAP, "0" * 32)
    assert fresh is not None and fresh.base is None and fresh.obsolete == []


def test_an_unchanged_check_needs_no_walk_until_an_event_comes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    (ws / "a/b").mkdir(parents=True)
    (ws / "a/b/deep.txt").write_text("one")
    box = Box(ws)
    first = box.snapshot_delta(CAP, None)
    assert first is not None
    walks: list[int] = []
    real = incremental.walk
    monkeypatch.setattr(incremental, "walk", lambda fd, watch=None: walks.append(fd) or real(fd, watch))
    (ws / "a/b/deep.txt").read_text()  # reading is not a change
    assert box.snapshot_unchanged() == [first.root_md5] and walks == []
    # A rewrite of the same size whose mtime is set back: an event, a walk, and the ctime moved.
    before = (ws / "a/b/deep.txt").stat()
    (ws / "a/b/deep.txt").write_text("two")
    os.utime(ws / "a/b/deep.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert box.snapshot_unchanged() == [] and len(walks) == 1
    second = box.snapshot_delta(CAP, first.root_md5)
    assert second is not None and [zlib.decompress(v) for k, v in second.objects.items() if "/p-" in k] == [b"two"]
    # A folder made after the walk is watched from the next walk on: a file in it is seen.
    (ws / "new").mkdir()
    assert box.snapshot_delta(CAP, second.root_md5) is not None
    (ws / "new/f.txt").write_text("inside")
    assert box.snapshot_unchanged() == []


def test_sandboxes_share_one_inotify_instance_and_see_only_their_own_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boxes = [folder_box(tmp_path / f"ws{i}") for i in range(3)]
    deltas = [box.snapshot_delta(CAP, None) for box in boxes]
    shared = incremental._Inotify.shared()
    assert shared is not None and all(d is not None for d in deltas)
    walks: list[int] = []
    real = incremental.walk
    monkeypatch.setattr(incremental, "walk", lambda fd, watch=None: walks.append(fd) or real(fd, watch))
    (tmp_path / "ws1/sub/f.txt").write_text("changed")
    answers = [box.snapshot_unchanged() for box in boxes]
    assert answers[0] and answers[2] and answers[1] == [] and len(walks) == 1  # only ws1 walked
    boxes[1].close_snapshot_watch()
    assert not [wd for wd, token in shared._owner.items() if token == boxes[1]._watch_token]


def folder_box(root: Path) -> Box:
    (root / "sub").mkdir(parents=True)
    (root / "sub/f.txt").write_text("one")
    return Box(root)


def test_a_change_no_event_reports_is_found_by_the_periodic_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Writes through a shared mmap raise no inotify event; the walk every FULL_WALK_SECONDS sees them.
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "mapped.bin").write_bytes(b"a" * 4096)
    box = Box(ws)
    first = box.snapshot_delta(CAP, None)
    assert first is not None
    monkeypatch.setattr(incremental._Inotify, "fired", lambda self, token: False)
    (ws / "mapped.bin").write_bytes(b"b" * 4096)
    assert box.snapshot_unchanged() == [first.root_md5]  # no event, and the last walk is recent
    monkeypatch.setattr(incremental, "FULL_WALK_SECONDS", 0.0)
    assert box.snapshot_unchanged() == []


def test_mostly_dead_packs_are_packed_again(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    for i in range(10):
        (ws / f"f{i}").write_bytes(os.urandom(10_000))
    box = Box(ws)
    first = box.snapshot_delta(CAP, None)
    assert first is not None
    (old_pack,) = fmt.decode_root(first.root).packs
    for i in range(6):
        (ws / f"f{i}").unlink()
    second = box.snapshot_delta(CAP, first.root_md5)
    assert second is not None
    assert old_pack in second.obsolete  # less than half of it was still used
    (new_pack,) = fmt.decode_root(second.root).packs
    assert len(zlib.decompressobj().decompress(second.objects[new_pack])) == 10_000


def test_objects_older_than_a_day_are_written_again_with_the_next_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bucket expires `sessions/` objects by age: an object a root still uses must not be
    # much older than the root, or it expires first and the snapshot is damaged.
    ws = tmp_path / "ws"
    for i in range(600):
        (ws / f"d{i // 100}").mkdir(parents=True, exist_ok=True)
        (ws / f"d{i // 100}/f{i}").write_bytes(os.urandom(100))
    box = Box(ws)
    first = box.snapshot_delta(CAP, None)
    assert first is not None
    (ws / "d0/f0").write_bytes(b"changed")
    fresh = box.snapshot_delta(CAP, first.root_md5)
    assert fresh is not None and len([k for k in fresh.objects if "/s-" in k]) <= 2  # nothing stale yet
    monkeypatch.setattr(incremental, "REFRESH_SECONDS", 0)
    (ws / "d0/f0").write_bytes(b"changed again")
    refreshed = box.snapshot_delta(CAP, fresh.root_md5)
    assert refreshed is not None
    root = fmt.decode_root(refreshed.root)
    assert set(root.objects()) <= set(refreshed.objects)  # every object the root uses, written now
    assert set(fmt.decode_root(fresh.root).packs) <= set(refreshed.obsolete)
    assert max(root.written.values()) - min(root.written.values()) <= 1


def test_links_are_never_followed_even_when_swapped_in_after_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    (ws / "d/secret.txt").write_text("decoy")
    os.symlink(outside, ws / "dir-link")
    os.symlink(outside / "secret.txt", ws / "file-link")
    walked, _ = incremental.walk(os.open(ws, os.O_RDONLY | os.O_DIRECTORY))
    # The agent swaps the folder for a link to the host's secrets between the walk and the read.
    (ws / "d").rename(ws / "d-old")
    os.symlink(outside, ws / "d")
    monkeypatch.setattr(incremental, "walk", lambda fd, watch=None: (dict(walked), False))
    delta = Box(ws).snapshot_delta(CAP, None)
    assert delta is not None
    packs = b"".join(zlib.decompress(v) for k, v in delta.objects.items() if "/p-" in k)
    assert b"host secret" not in packs
    entries = {e.rel: e for e in fmt.read_entries(fmt.decode_root(delta.root), delta.objects)}
    assert entries["dir-link"].kind == entries["file-link"].kind == "symlink"
    assert "d/secret.txt" not in entries  # left for the next save, never read through the link


def _forged(tmp_path: Path, entries: list[fmt.Entry], packs: dict[str, bytes] | None = None) -> tuple[bytes, dict[str, bytes]]:
    lines = {e.rel: fmt.entry_line(e) for e in entries}
    by_rel = {e.rel: e for e in entries}
    root, objects, _ = fmt.seal("0123456789abcdef", by_rel, lines, {}, {k: len(v) for k, v in (packs or {}).items()})
    return fmt.encode_root(root), {**objects, **(packs or {})}


def _file(rel: str, body: bytes) -> tuple[fmt.Entry, dict[str, bytes]]:
    blob = zlib.compress(body)
    key = fmt.pack_key("0123456789abcdef", blob)
    import hashlib

    return fmt.Entry(**fmt.path_fields(rel), kind="file", mode=0o644, size=len(body),
                     digest=hashlib.sha256(body).hexdigest()[:32], pack=key, offset=0, length=len(blob)), {key: blob}


@pytest.mark.parametrize("case", ["dotdot", "absolute", "below-link", "skills"])
def test_hostile_snapshots_cannot_write_outside_and_change_nothing(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "mine.txt").write_text("still here")
    entries: list[fmt.Entry] = []
    if case == "below-link":
        entries.append(fmt.Entry(**fmt.path_fields("link"), kind="symlink", mode=0o777,
                                 target=__import__("base64").b64encode(str(outside).encode()).decode()))
    name = {"dotdot": "../escape", "absolute": "/abs/escape", "below-link": "link/escape",
            "skills": ".claude/skills/evil.md"}[case]
    entry, packs = _file(name, b"x")
    root, objects = _forged(tmp_path, [*entries, entry], packs)
    with pytest.raises(fmt.SnapshotDamaged if case == "skills" else SandboxPathError):
        Box(target).import_snapshot(root, objects, CAP)
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape").exists()
    assert os.listdir(target) == ["mine.txt"]


@pytest.mark.parametrize("damage", ["missing-pack", "garbled-pack", "garbled-segment", "garbled-root"])
def test_a_damaged_snapshot_is_refused_before_anything_is_removed(tmp_path: Path, damage: str) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("saved")
    delta = Box(ws).snapshot_delta(CAP, None)
    assert delta is not None
    root, objects = delta.root, dict(delta.objects)
    pack = next(k for k in objects if "/p-" in k)
    segment = next(k for k in objects if "/s-" in k)
    if damage == "missing-pack":
        del objects[pack]
    elif damage == "garbled-pack":
        objects[pack] = objects[pack][:-1] + b"!"
    elif damage == "garbled-segment":
        objects[segment] = objects[segment][:-1] + b"!"
    else:
        root = root[:-2]
    target = tmp_path / "target"
    target.mkdir()
    (target / "mine.txt").write_text("still here")
    with pytest.raises(fmt.SnapshotDamaged):
        Box(target).import_snapshot(root, objects, CAP)
    assert os.listdir(target) == ["mine.txt"]


def test_the_cap_is_enforced_with_a_clear_message(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "random.bin").write_bytes(os.urandom(2 * 2**20))
    with pytest.raises(SnapshotTooLarge, match="WORKSPACE_SNAPSHOT_MB=1 MiB"):
        Box(ws).snapshot_delta(2**20, None)
    (ws / "random.bin").unlink()
    with open(ws / "zeros.bin", "wb") as handle:
        handle.truncate(5 * 2**20)  # sparse: counted by its length against four times the cap
    with pytest.raises(SnapshotTooLarge, match="add up to more than"):
        Box(ws).snapshot_delta(2**20, None)


def test_a_sparse_file_keeps_its_holes_and_its_allocated_size(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with open(ws / "sparse.bin", "wb") as handle:
        handle.truncate(8 * 2**20)
        handle.seek(4 * 2**20)
        handle.write(b"middle")
    delta = Box(ws).snapshot_delta(CAP, None)
    assert delta is not None and sum(len(v) for v in delta.objects.values()) < 64_000
    (entry,) = fmt.read_entries(fmt.decode_root(delta.root), delta.objects)
    assert entry.allocated is not None and entry.allocated < 2**20
    target = tmp_path / "target"
    target.mkdir()
    Box(target).import_snapshot(delta.root, delta.objects, CAP)
    assert (target / "sparse.bin").stat().st_size == 8 * 2**20
    assert (target / "sparse.bin").stat().st_blocks * 512 < 2**20


def test_a_1500_deep_tree_is_saved_and_restored_within_a_few_fds(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    ws = _deep(tmp_path / "ws", 1500)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(held + 96, hard), hard))
    out = tmp_path / "out"
    out.mkdir()
    try:
        box = Box(ws)
        delta = box.snapshot_delta(CAP, None)
        assert delta is not None and box.snapshot_unchanged() == [delta.root_md5]
        restored = Box(out)
        assert restored.import_snapshot(delta.root, delta.objects, CAP) == 1
        assert restored.snapshot_unchanged() == [delta.root_md5]
        found = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(1500):
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=found)
            os.close(found)
            found = child
        leaf = os.open("deep.txt", os.O_RDONLY, dir_fd=found)
        os.close(found)
        assert os.read(leaf, 100) == b"DEEP-END"
        os.close(leaf)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        remove_path(str(ws))  # pytest's own clean-up of old temporary folders uses shutil.rmtree
        remove_path(str(out))


def test_frames_round_trip_and_a_short_body_is_refused() -> None:
    body = fmt.encode_frames(b"{root}", {"a/p-1": b"one", "a/s-2": b""}, base="b" * 32, obsolete=["x"], files=3)
    back = fmt.decode_frames(body)
    assert (back.root, back.objects, back.base, back.obsolete, back.files) == (
        b"{root}", {"a/p-1": b"one", "a/s-2": b""}, "b" * 32, ["x"], 3)
    with pytest.raises(SandboxError):
        fmt.decode_frames(body[:-1])
    with pytest.raises(SandboxError):
        fmt.decode_frames(json.dumps({"nope": 1}).encode() + b"\n")
