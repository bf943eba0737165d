"""Cgroup limits: v2 and v1 layouts are detected and written (on a stand-in tree), counters read."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.sandbox import cgroups
from chalicelib.sandbox.cgroups import Cgroups


def test_v2_is_preferred_and_gets_pids_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "_own_cgroup", lambda controller: "/srv" if controller is None else None)
    base = tmp_path / "srv"
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    found = Cgroups(tmp_path)
    assert found.version == "v2"
    group = found.create("sess-200001", pids=64, memory_bytes=256 << 20)
    assert group is not None and group.dirs() == [base / cgroups.GROUP / "sess-200001"]
    assert (base / "cgroup.subtree_control").read_text() == "+pids +memory"
    assert (group.pids_dir / "pids.max").read_text() == "64"
    assert (group.memory_dir / "memory.max").read_text() == str(256 << 20)
    (group.pids_dir / "pids.events").write_text("max 3\n")
    (group.memory_dir / "memory.events").write_text("low 0\noom 1\noom_kill 2\n")
    assert group.counters() == cgroups.Counters(pids_max=3, oom_kills=2)


def test_v1_when_v2_has_no_controllers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "_own_cgroup", lambda controller: "/" if controller is None else f"/{controller}-own")
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    for controller in ("pids", "memory"):
        (tmp_path / controller / f"{controller}-own").mkdir(parents=True)
        (tmp_path / controller / "cgroup.procs").write_text("")
    found = Cgroups(tmp_path)
    assert found.version == "v1" and "does not delegate" in found.reason
    group = found.create("s-1", pids=10, memory_bytes=1 << 20)
    assert group is not None
    assert (tmp_path / "pids" / "pids-own" / cgroups.GROUP / "s-1" / "pids.max").read_text() == "10"
    assert (tmp_path / "memory" / "memory-own" / cgroups.GROUP / "s-1" / "memory.limit_in_bytes").read_text() == str(1 << 20)


def test_without_a_writable_hierarchy_there_are_no_cgroups(tmp_path: Path) -> None:
    found = Cgroups(tmp_path / "nothing")
    assert found.version is None and found.create("s", pids=1, memory_bytes=1) is None
