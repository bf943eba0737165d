"""Host-side workspace operations through directory fds: links are refused, never followed,
with openat2 and with the O_NOFOLLOW walk used where the kernel lacks it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.sandbox import linux, paths
from chalicelib.sandbox.base import SandboxError, SandboxFileNotFound, SandboxIsADirectory, SandboxPathError


@pytest.fixture(params=["openat2", "walk"])
def tree(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[paths.DirTree]:
    if request.param == "walk":
        monkeypatch.setattr(linux, "_openat2_works", False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a")
    os.symlink(outside, root / "dirlink")
    os.symlink(outside / "secret.txt", root / "filelink")
    os.mkfifo(root / "fifo")
    t = paths.DirTree.open(str(root))
    yield t
    t.close()


def op(call, path: str):  # type: ignore[no-untyped-def]
    try:
        return call()
    except OSError as exc:
        raise paths.translate(exc, path) from None


def test_reads_follow_no_link_and_open_no_fifo(tree: paths.DirTree, tmp_path: Path) -> None:
    assert op(lambda: tree.read(["sub", "a.txt"]), "sub/a.txt") == b"a"
    for parts in (["dirlink", "secret.txt"], ["filelink"]):
        with pytest.raises(SandboxPathError, match="symbolic link"):
            op(lambda parts=parts: tree.read(parts), "/".join(parts))
    with pytest.raises(SandboxPathError, match="regular file"):
        op(lambda: tree.read(["fifo"]), "fifo")  # would block forever if opened for reading without O_NONBLOCK
    with pytest.raises(SandboxIsADirectory):
        op(lambda: tree.read(["sub"]), "sub")
    with pytest.raises(SandboxFileNotFound):
        op(lambda: tree.read(["sub", "missing"]), "sub/missing")
    with pytest.raises(SandboxFileNotFound):
        op(lambda: tree.read(["sub", "a.txt", "below-a-file"]), "x")


def test_writes_and_mkdirs_never_leave_the_tree(tree: paths.DirTree, tmp_path: Path) -> None:
    with pytest.raises(SandboxPathError):
        op(lambda: tree._open_dir(["dirlink", "made"], create=True), "dirlink/made")
    with tree.directory([]) as top:
        with pytest.raises(SandboxError):
            op(lambda: tree.write(top, "filelink", b"overwritten"), "filelink")
        with pytest.raises(SandboxPathError, match="regular file"):
            op(lambda: tree.write(top, "fifo", b"x"), "fifo")
    assert (tmp_path / "outside" / "secret.txt").read_text() == "host secret"
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.txt"]
    with tree.directory(["new", "deep"], create=True) as deep:
        tree.write(deep, "f.txt", b"ok")
    assert (tmp_path / "ws" / "new" / "deep" / "f.txt").read_bytes() == b"ok"


def test_listing_and_deleting_stay_inside(tree: paths.DirTree, tmp_path: Path) -> None:
    found = {e.rel: e.is_dir for e in tree.walk([], recursive=True)}
    assert found["sub"] is True and found["sub/a.txt"] is False and found["dirlink"] is False
    assert not any(rel.startswith("dirlink/") for rel in found)
    tree.delete(["dirlink"])
    tree.delete([])
    assert list((tmp_path / "ws").iterdir()) == []
    assert (tmp_path / "outside" / "secret.txt").read_text() == "host secret"


def test_a_deleted_root_is_noticed(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    t = paths.DirTree.open(str(tmp_path / "gone"))
    assert not t.vanished()
    (tmp_path / "gone").rmdir()
    assert t.vanished()
    t.close()
