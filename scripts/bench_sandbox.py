"""Benchmark: what the sandbox's isolation costs, and why the workspace is a tmpfs.

Prints, for local bubblewrap sandboxes on this machine (run as root to get per-session uids,
tmpfs workspaces and cgroups):
- creating and destroying a sandbox (uid record, tmpfs mount, cgroup; no process yet);
- one command through the persistent bash (stdin round trip), and through a fresh exec;
- host-side file operations through directory fds (write_files of 100 files, 1,000 reads);
- the disk choices: mounting a size-limited tmpfs versus making and loop-mounting an ext4
  image of the same size, and writing 256 MB into each.

    .venv/bin/python -m scripts.bench_sandbox [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.benchlib.timing import show, timed

ROOT = Path(__file__).resolve().parents[1]


def disk_choices(folder: Path, size_mb: int) -> None:
    """tmpfs versus a loop-mounted ext4 image: setup time and a 256 MB write."""
    from chalicelib.sandbox import linux

    tmpfs, ext4, image = folder / "tmpfs", folder / "ext4", folder / "image.ext4"
    tmpfs.mkdir()
    ext4.mkdir()
    start = time.perf_counter()
    linux.mount("tmpfs", str(tmpfs), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, f"size={size_mb}m")
    print(f"{'tmpfs size=' + str(size_mb) + 'm: mount':<58} {(time.perf_counter() - start) * 1000:8.2f} ms")
    ext4_ok = shutil.which("mkfs.ext4") is not None and os.path.exists("/dev/loop-control")
    if ext4_ok:
        start = time.perf_counter()
        with open(image, "wb") as handle:
            handle.truncate(size_mb << 20)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)], capture_output=True, text=True, check=False)
        mounted = subprocess.run(["mount", "-o", "loop,nosuid,nodev", str(image), str(ext4)], capture_output=True, text=True, check=False)
        if made.returncode or mounted.returncode:
            print(f"ext4 image: cannot be made or mounted here ({(made.stderr or mounted.stderr).strip()[:120]})")
            ext4_ok = False
        else:
            print(f"{'ext4 image ' + str(size_mb) + ' MB: truncate + mkfs.ext4 + loop mount':<58} {(time.perf_counter() - start) * 1000:8.2f} ms")
    try:
        for name, target in (("tmpfs", tmpfs), ("ext4 loop", ext4)):
            if name == "ext4 loop" and not ext4_ok:
                continue
            start = time.perf_counter()
            subprocess.run(["dd", "if=/dev/zero", f"of={target}/f", "bs=1M", "count=256", "conv=fsync"],
                           capture_output=True, check=True)
            print(f"{name + ': write 256 MB (dd, fsync)':<58} {(time.perf_counter() - start) * 1000:8.2f} ms")
            full = subprocess.run(["dd", "if=/dev/zero", f"of={target}/g", "bs=1M", f"count={size_mb * 2}"],
                                  capture_output=True, text=True, check=False)
            print(f"{name + ': writing past its size':<58} {'No space left on device' in full.stderr}")
    finally:
        linux.umount_lazy(str(tmpfs))
        if ext4_ok:
            linux.umount_lazy(str(ext4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--disk-mb", type=int, default=1024)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import logging

    logging.disable(logging.WARNING)
    from chalicelib.config import Settings
    from chalicelib.sandbox.base import SandboxOptions
    from chalicelib.sandbox.bwrap import LocalSandboxProvider

    folder = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        provider = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(folder / "sandboxes"),
                                                           "SANDBOX_DISK_MB": str(args.disk_mb)}))
        print("limits:", provider.limits())
        counter = iter(range(10**6))
        show("create + destroy a sandbox", timed(lambda: provider.destroy(provider.create(f"b{next(counter)}", SandboxOptions()).session_id) and None, args.rounds))
        sandbox = provider.create("bench", SandboxOptions())
        bash = sandbox.bash()
        bash.run("true")
        show("bash: one command (`cd /workspace; echo hi`)", timed(lambda: bash.run("cd /workspace; echo hi"), args.rounds * 5))
        show("exec: one command in a fresh bwrap (`echo hi`)", timed(lambda: sandbox.exec("echo hi"), args.rounds))
        files = {f"/workspace/skills/s{i % 10}/f{i}.md": "x" * 2000 for i in range(100)}
        show("write_files: 100 files in 10 folders", timed(lambda: sandbox.write_files(files), args.rounds))
        show("read_file x 1000", timed(lambda: [sandbox.read_file("/workspace/skills/s1/f1.md") for _ in range(1000)], max(3, args.rounds // 4)))
        show("list_files (110 entries)", timed(lambda: sandbox.list_files("/workspace"), args.rounds))
        provider.destroy("bench")
        if os.geteuid() == 0:
            disk_choices(folder, args.disk_mb)
        else:
            print("disk choices: run as root to compare tmpfs and a loop-mounted ext4 image")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
