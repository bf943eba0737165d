"""Benchmark: workspace snapshot and restore for 1,000 files / 50 MB.

The workspace is made of 1,000 files of 50 KiB (half random bytes, which do not compress, half
source-like text, which does), in a real bubblewrap sandbox. Storage is moto server behind a
proxy adding `--delay` per request, in a child process (as R2 is another machine). Prints the
median of `--runs` runs for each step:

- export: the sandbox packs every file from nothing (fd-safe walk, zlib level 1 per file)
- save from nothing: export + HeadObject + the packs, segments and root PUT (a first save)
- unchanged save: HeadObject beside the sandbox's check (inotify: no event, no walk)
- restore: the root, segments and packs GET + import into a fresh sandbox

`scripts/benchlib/growth_workspace` measures how these grow (10 files against 10,000).

    .venv/bin/python -m scripts.bench_snapshot [--runs 3] [--files 1000] [--mb 50] [--delay 0.02]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

from scripts.benchlib.timing import median_ms

ROOT = Path(__file__).resolve().parents[1]


def fill(sandbox_workspace: Path, files: int, total_mb: int) -> int:
    """Write `files` files adding up to `total_mb` MiB; return the bytes written."""
    size = total_mb * 2**20 // files
    rng = random.Random(7)
    written = 0
    for i in range(files):
        folder = sandbox_workspace / f"pkg{i // 100:02d}"
        folder.mkdir(exist_ok=True)
        if i % 2:
            data = rng.randbytes(size)
        else:
            line = f"def function_{i}(value):\n    return value * {i}  # a line of code\n".encode()
            data = (line * (size // len(line) + 1))[:size]
        (folder / f"file{i:04d}.{'bin' if i % 2 else 'py'}").write_bytes(data)
        written += size
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to every storage request")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from chalicelib.config import Settings
    from chalicelib.sandbox.base import SandboxOptions
    from chalicelib.sandbox.bwrap import LocalSandboxProvider
    from chalicelib.services.workspace_snapshots import WorkspaceSnapshots
    from chalicelib.storage.factory import build_store
    from scripts.benchlib.storage_process import remote_storage
    from tests.support.s3 import create_bucket, storage_settings

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, remote_storage(args.delay) as storage:
        create_bucket(storage_settings(storage.upstream, bucket))
        settings = Settings.from_env({
            "S3_ENDPOINT_URL": storage.url, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing",
            "R2_SECRET_ACCESS_KEY": "testing", "S3_REGION": "auto", "SANDBOX_ROOT": str(Path(tmp) / "sandboxes"),
        })
        store = build_store(settings)
        snapshots = WorkspaceSnapshots(settings, store)
        provider = LocalSandboxProvider(settings)
        source = provider.create("bench-src", SandboxOptions())
        raw = fill(source.workspace, args.files, args.mb)
        cap = settings.workspace.snapshot_bytes

        def made() -> int:
            delta = source.snapshot_delta(cap, None)
            return sum(len(v) for v in delta.objects.values()) + len(delta.root) if delta is not None else 0

        export_ms = median_ms(args.runs, made)
        archive_size = made()

        def forget() -> None:
            snapshots.delete_for_user("bench-user")

        save_ms = median_ms(args.runs, lambda: snapshots.save("bench-src", "bench-user", source), before=forget)
        unchanged_ms = median_ms(args.runs, lambda: snapshots.save("bench-src", "bench-user", source))
        outcome = snapshots.save("bench-src", "bench-user", source).outcome

        targets = iter(range(args.runs))
        current: list[object] = []

        def fresh() -> None:
            current[:] = [provider.create(f"bench-dst-{next(targets)}", SandboxOptions())]

        restored: list[int | None] = []
        restore_ms = median_ms(args.runs, lambda: restored.append(snapshots.restore("bench-src", "bench-user", current[0])), before=fresh)  # type: ignore[arg-type]
        assert restored and all(n == args.files for n in restored), restored

        print(f"workspace: {args.files} files, {raw / 2**20:.1f} MiB; snapshot {archive_size / 2**20:.1f} MiB "
              f"(zlib level 1 per file; half the files are random bytes); storage {args.delay * 1000:.0f} ms away; "
              f"median of {args.runs} runs")
        print(f"  export (the sandbox packs every file)     {export_ms:8.0f} ms")
        print(f"  save from nothing (export+HEAD+PUTs)      {save_ms:8.0f} ms")
        print(f"  save, nothing changed (HEAD+check)        {unchanged_ms:8.0f} ms   -> {outcome}")
        print(f"  restore into a new sandbox (GETs+import)  {restore_ms:8.0f} ms   ({restored[-1]} files)")
        for sid in provider.sessions():
            provider.destroy(sid)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("AWS_REGION", "us-east-1")
    sys.exit(main())
