"""Per-session uids: distinct across processes allocating at once, taken back from dead holders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chalicelib.sandbox.uids import UidAllocator
from tests.support.api import ROOT

HOLDER = """
import sys
from pathlib import Path
from chalicelib.sandbox.uids import UidAllocator
allocator = UidAllocator(Path(sys.argv[1]), base=900000, count=200)
print(" ".join(str(allocator.allocate(f"s{i}")) for i in range(15)), flush=True)
sys.stdin.read()  # hold the uids until the test lets go
"""


def test_processes_allocating_at_once_never_share_a_uid(tmp_path: Path) -> None:
    folder = tmp_path / "uids"
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        taken = [int(uid) for proc in procs for uid in proc.stdout.readline().split()]  # type: ignore[union-attr]
    finally:
        for proc in procs:
            proc.communicate("", timeout=30)
    assert len(taken) == 90 and len(set(taken)) == 90, sorted(taken)
    assert stat_mode(folder) == 0o700
    # Their holders are gone: the next allocation takes the first uid back.
    assert UidAllocator(folder, base=900000, count=200).allocate("next") == 900000


def test_release_frees_only_what_this_process_holds(tmp_path: Path) -> None:
    allocator = UidAllocator(tmp_path / "uids", base=900000, count=3)
    first, second = allocator.allocate("a"), allocator.allocate("b")
    assert (first, second) == (900000, 900001)
    assert allocator.holder(first)["session"] == "a"  # type: ignore[index]
    allocator.release(first)
    assert allocator.holder(first) is None
    assert allocator.allocate("c") == 900000
    allocator.allocate("d")
    try:
        allocator.allocate("e")
    except Exception as exc:  # noqa: BLE001 - the type is checked below
        assert type(exc).__name__ == "UidsExhausted" and "destroy idle sessions" in str(exc)
    else:
        raise AssertionError("a fourth uid was handed out from a range of three")


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
