"""Workspace archives: deterministic, skills left out, links archived but never followed, and
hostile archives unable to write outside the folder they are applied to."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from chalicelib.sandbox import archive
from chalicelib.sandbox.base import SandboxFileNotFound, SandboxPathError, SnapshotTooLarge
from chalicelib.sandbox.paths import remove_path

CAP = 10 * 2**20


def workspace(root: Path) -> Path:
    ws = root / "ws"
    (ws / ".claude/skills/pdf").mkdir(parents=True)
    (ws / ".claude/skills/pdf/SKILL.md").write_text("skill")
    (ws / ".claude/notes.md").write_text("agent notes")
    (ws / "src").mkdir()
    (ws / "src/main.py").write_text("print('hi')\n")
    (ws / "run.sh").write_text("#!/bin/sh\n")
    (ws / "run.sh").chmod(0o755)
    os.symlink("/etc/passwd", ws / "passwd-link")
    os.mkfifo(ws / "pipe")  # not content: skipped, and never blocks the packer
    return ws


def hostile(*members: tuple[str, str, bytes | str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_round_trip_is_exact_and_deterministic(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    data = archive.pack(ws, CAP)
    assert archive.pack(ws, CAP) == data  # same files, same bytes: an unchanged workspace writes nothing
    names = {e.path: e.kind for e in archive.archive_manifest(data, CAP)}
    assert names == {".claude": "dir", ".claude/notes.md": "file", "passwd-link": "symlink", "run.sh": "file",
                     "src": "dir", "src/main.py": "file"}
    target = tmp_path / "target"
    (target / ".claude/skills").mkdir(parents=True)
    (target / ".claude/skills/kept.md").write_text("loaded by setup")
    (target / "stale.txt").write_text("from before")
    assert archive.unpack(target, data, CAP) == 3
    assert not (target / "stale.txt").exists()
    assert (target / ".claude/skills/kept.md").read_text() == "loaded by setup"
    assert (target / "src/main.py").read_text() == "print('hi')\n"
    assert os.readlink(target / "passwd-link") == "/etc/passwd"
    assert (target / "run.sh").stat().st_mode & 0o777 == 0o755
    assert archive.pack(target, CAP) == data  # restored then saved: no new write


def test_links_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    ws = tmp_path / "ws"
    ws.mkdir()
    os.symlink(outside, ws / "dir-link")
    os.symlink(outside / "secret", ws / "file-link")
    data = archive.pack(ws, CAP)
    assert b"host secret" not in data and b"host secret" not in __import__("gzip").decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert {m.name: m.type for m in tar} == {"dir-link": tarfile.SYMTYPE, "file-link": tarfile.SYMTYPE}
    with pytest.raises(SandboxPathError, match="symbolic link"):
        archive.archive_read(data, "file-link", CAP)
    with pytest.raises(SandboxPathError, match="symbolic link"):
        archive.archive_edit(data, "dir-link/planted", b"x", CAP, 0)
    with pytest.raises(SandboxFileNotFound):
        archive.archive_read(data, "dir-link/secret", CAP)


@pytest.mark.parametrize("members", [
    [("../escape", "file", "x")],
    [("/abs/escape", "file", "x")],
    [("link", "sym", "OUTSIDE"), ("link/escape", "file", "x")],
    [("a/../../escape", "file", "x")],
])
def test_hostile_archives_cannot_write_outside(tmp_path: Path, members: list[tuple[str, str, str]]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    data = hostile(*[(n, k, str(outside) if p == "OUTSIDE" else p) for n, k, p in members])
    with pytest.raises(SandboxPathError):
        archive.unpack(target, data, CAP)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_hard_links_and_devices_are_not_created(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    archive.unpack(target, hostile(("hard", "hard", "/etc/passwd"), ("ok.txt", "file", "fine")), CAP)
    assert sorted(p.name for p in target.iterdir()) == ["ok.txt"]


def test_the_cap_is_enforced_with_a_clear_message(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "random.bin").write_bytes(os.urandom(2 * 2**20))
    with pytest.raises(SnapshotTooLarge, match="WORKSPACE_SNAPSHOT_MB=1 MiB"):
        archive.pack(ws, 2**20)
    # Highly compressible content is bounded by its raw size too.
    (ws / "random.bin").unlink()
    with open(ws / "zeros.bin", "wb") as handle:
        handle.truncate(5 * 2**20)
    with pytest.raises(SnapshotTooLarge, match="add up to more than"):
        archive.pack(ws, 2**20)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "/workspace", "/workspace/../etc", "a\x00b"])
def test_paths_outside_the_workspace_are_refused(path: str) -> None:
    with pytest.raises(SandboxPathError):
        archive.clean_relative(path)


def test_a_bad_archive_leaves_the_workspace_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "mine.txt").write_text("still here")
    bad = hostile(("ok.txt", "file", "fine"), ("twice", "file", "1"), ("twice", "file", "2"))
    with pytest.raises(SandboxPathError, match="twice"):
        archive.unpack(target, bad, CAP)
    assert (target / "mine.txt").read_text() == "still here" and not (target / "ok.txt").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")
def test_restored_entries_belong_to_the_workspace_owner(tmp_path: Path) -> None:
    source = workspace(tmp_path)
    data = archive.pack(source, CAP)
    target = tmp_path / "target"
    target.mkdir()
    os.chown(target, 65534, 65534)
    archive.unpack(target, data, CAP)
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in target.rglob("*")}
    assert owners == {(65534, 65534)}


# -- issue 24: no name and no depth stops a save ---------------------------------------------


def _deep(root: Path, depth: int) -> Path:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):  # by fds: the path would pass PATH_MAX long before the kernel minds
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"DEEP-END")
        os.close(leaf)
    finally:
        os.close(fd)
    return root


def test_a_non_utf8_name_round_trips_byte_for_byte(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / os.fsdecode(b"bad\xff")).write_bytes(b"raw name")
    (ws / os.fsdecode(b"dir\xfe")).mkdir()
    (ws / os.fsdecode(b"dir\xfe") / "caf\u00e9").write_bytes(b"utf-8 name")
    data = archive.pack(ws, CAP)
    assert archive.signature(ws)  # the change check walks the same names
    out = tmp_path / "out"
    out.mkdir()
    archive.unpack(out, data, CAP)
    assert sorted(os.listdir(os.fsencode(out))) == [b"bad\xff", b"dir\xfe"]
    assert (out / os.fsdecode(b"bad\xff")).read_bytes() == b"raw name"
    assert (out / os.fsdecode(b"dir\xfe") / "caf\u00e9").read_bytes() == b"utf-8 name"
    assert {e.path for e in archive.archive_manifest(data, CAP)} == {os.fsdecode(b"bad\xff"), os.fsdecode(b"dir\xfe"),
                                                                    os.fsdecode(b"dir\xfe/caf\xc3\xa9")}


def test_a_1500_deep_tree_is_packed_listed_restored_and_removed_within_a_few_fds(tmp_path: Path) -> None:
    import resource

    (tmp_path / "ws").mkdir()
    (tmp_path / "empty").mkdir()
    ws = _deep(tmp_path / "ws", 1500)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # One fd per level would need 1,500: the walk, the restore and the removal hold a few at a time.
    # The cap counts from what the process holds already (a whole suite's run holds more).
    held = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(held + 64, hard), hard))
    try:
        data = archive.pack(ws, CAP)
        entries = archive.manifest(ws)
        out = tmp_path / "out"
        out.mkdir()
        archive.unpack(out, data, CAP)
        listed = archive.archive_manifest(data, CAP)
        archive.unpack(out, archive.pack(tmp_path / "empty", CAP), CAP)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        remove_path(str(ws))  # pytest's own clean-up of old temporary folders uses shutil.rmtree
    assert not ws.exists()
    assert len(entries) == len(listed) == 1501 and entries[-1].path.endswith("/deep.txt")
    assert os.listdir(out) == []  # the second unpack removed the whole deep tree first


def test_a_folder_moved_during_a_walk_stops_it_rather_than_guess(tmp_path: Path) -> None:
    from chalicelib.sandbox.paths import TreeChanged, iter_tree

    ws = tmp_path / "ws"
    (ws / "a" / "inner").mkdir(parents=True)
    (ws / "b").mkdir()
    (ws / "a" / "inner" / "f").write_text("x")
    top = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk = iter_tree(top, sort=True)
        seen = []
        with pytest.raises(TreeChanged, match="moved during the walk"):
            for found in walk:
                seen.append(found.rel)
                if found.rel == "a/inner/f":
                    os.rename(ws / "a" / "inner", ws / "b" / "inner")  # ".." of inner is now b, not a
        assert seen[:3] == ["a", "a/inner", "a/inner/f"]
    finally:
        os.close(top)
