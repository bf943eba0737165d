"""The workspace rows of `scripts/bench_growth`: what a snapshot costs as the workspace grows.

A real bubblewrap sandbox (`LocalSandboxProvider`, as `scripts/bench_snapshot` uses) and moto
behind a latency proxy adding 20 ms per request, in a child process (`remote_storage`). The
workspace is `bench_snapshot.fill`'s: half random bytes, half source-like text, in folders of 100.

- unchanged check: a save when nothing changed (the root's HEAD beside the sandbox's walk)
- changed save: one file of the workspace rewritten, then a save: its time and the bytes PUT
- restore: a new sandbox given the 10,000-file / 50 MB snapshot
- upload: `PUT /sessions/{s}/files/content` on a live sandbox is a write into it and a save;
  the 1st and the 60th of 60 uploads of 256 KB (and the same into a stored snapshot, no sandbox)

    .venv/bin/python -m scripts.benchlib.growth_workspace [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from scripts.benchlib.growth import Figure, kb, table
from scripts.benchlib.latency_proxy import Traffic
from scripts.benchlib.timing import median_ms

AREA = "workspace"
DELAY = 0.02


def _put_bytes(traffic: list[Traffic]) -> int:
    return sum(t.sent for t in traffic if t.method == "PUT")


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def measure(quick: bool = False) -> list[Figure]:
    """The workspace figures; `quick`: 1,000 files / 5 MB instead of 10,000 / 50 MB, 10 uploads."""
    from chalicelib.config import Settings
    from chalicelib.sandbox.base import SandboxOptions
    from chalicelib.sandbox.bwrap import LocalSandbox, LocalSandboxProvider
    from chalicelib.services.workspace_snapshots import WorkspaceSnapshots
    from chalicelib.storage.factory import build_store
    from scripts.bench_snapshot import fill
    from scripts.benchlib.storage_process import remote_storage
    from tests.support.s3 import create_bucket, storage_settings

    big_files, big_mb = (1000, 5) if quick else (10_000, 50)
    uploads = 10 if quick else 60
    runs = 3 if quick else 5
    big = f"{big_files:,} files"
    os.environ.setdefault("AWS_REGION", "us-east-1")
    bucket = f"growth-ws-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, remote_storage(DELAY) as storage:
        create_bucket(storage_settings(storage.upstream, bucket))
        settings = Settings.from_env({
            "S3_ENDPOINT_URL": storage.url, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing",
            "R2_SECRET_ACCESS_KEY": "testing", "S3_REGION": "auto", "SANDBOX_ROOT": str(Path(tmp) / "sandboxes"),
            "SANDBOX_DISK_MB": "512",
        })
        snapshots = WorkspaceSnapshots(settings, build_store(settings))
        provider = LocalSandboxProvider(settings)
        try:
            unchanged: dict[str, str] = {}
            changed: dict[str, str] = {}
            raw: dict[str, Any] = {}
            for label, files, mb in (("10 files", 10, 1), (big, big_files, big_mb)):
                sid = f"ws-{files}"
                box = provider.create(sid, SandboxOptions())
                fill(box.workspace, files, mb)
                snapshots.save(sid, "bench", box)
                storage.take_traffic()
                raw[f"unchanged {label}"] = median_ms(runs, lambda: snapshots.save(sid, "bench", box))  # noqa: B023
                unchanged[label] = _ms(raw[f"unchanged {label}"])
                victim = next(box.workspace.rglob("file0001.*"))
                counter = iter(range(10**6))
                sent: list[int] = []

                def change(victim: Path = victim, counter: Any = counter) -> None:
                    victim.write_bytes(os.urandom(4096) + f"{next(counter)}".encode())
                    storage.take_traffic()

                def save(sid: str = sid, box: LocalSandbox = box) -> None:
                    assert snapshots.save(sid, "bench", box).outcome == "written"
                    sent.append(_put_bytes(storage.take_traffic()))

                raw[f"changed {label}"] = median_ms(runs, save, before=change)
                changed[label] = f"{_ms(raw[f'changed {label}'])}, {kb(statistics.median(sent))} written"
                raw[f"changed bytes {label}"] = statistics.median(sent)
                if files == big_files:
                    restores: list[int] = []
                    targets = iter(range(runs))
                    current: list[LocalSandbox] = []

                    def fresh() -> None:
                        current[:] = [provider.create(f"restore-{next(targets)}", SandboxOptions())]

                    raw["restore"] = median_ms(runs, lambda: restores.append(
                        snapshots.restore(sid, "bench", current[0]) or 0), before=fresh)  # noqa: B023
                    assert restores and all(n == big_files for n in restores), restores
                    for other in [s for s in provider.sessions() if s.startswith("restore-")]:
                        provider.destroy(other)
                provider.destroy(sid)

            live = provider.create("uploads", SandboxOptions())
            # A new body each time: the same bytes again would be found stored already and cost no pack.
            bodies = [os.urandom(256 * 1024) for _ in range(uploads)]
            upload_ms: list[float] = []
            upload_bytes: list[int] = []
            for n in range(uploads):
                storage.take_traffic()
                start = time.perf_counter()
                live.write_file(f"/workspace/uploads/file{n:02d}.bin", bodies[n])
                snapshots.save("uploads", "bench", live)
                upload_ms.append((time.perf_counter() - start) * 1000)
                upload_bytes.append(_put_bytes(storage.take_traffic()))
            provider.destroy("uploads")
            aside_ms: list[float] = []
            aside_bytes: list[int] = []
            for n in range(uploads):
                storage.take_traffic()
                start = time.perf_counter()
                snapshots.edit("uploads-snap", "bench", f"uploads/file{n:02d}.bin", bodies[n])
                aside_ms.append((time.perf_counter() - start) * 1000)
                aside_bytes.append(_put_bytes(storage.take_traffic()))
        finally:
            for sid in provider.sessions():
                provider.destroy(sid)

    small_bytes, big_bytes = raw["changed bytes 10 files"], raw[f"changed bytes {big}"]
    last = f"upload {uploads}"
    return [
        Figure(AREA, "unchanged-workspace check (a save, nothing changed)", unchanged,
               f"≤ 50 ms at {big}", raw[f"unchanged {big}"] <= 50),
        Figure(AREA, "changed save, one 4 KB file rewritten", changed,
               f"bytes written independent of the workspace (≤ 64 KB at {big_mb} MB: one pack, one segment, the root)",
               big_bytes <= 64_000 and big_bytes <= max(small_bytes, 1) * 20),
        Figure(AREA, f"restore into a new sandbox ({big}, {big_mb} MB)", {big: _ms(raw["restore"])},
               "≤ 2 s", raw["restore"] <= 2000),
        Figure(AREA, "workspace file upload of 256 KB (live sandbox: write + save)",
               {"upload 1": f"{_ms(upload_ms[0])}, {kb(upload_bytes[0])} written",
                last: f"{_ms(upload_ms[-1])}, {kb(upload_bytes[-1])} written"},
               "the last costs what the first does (≤ 1.5× bytes)", upload_bytes[-1] <= 1.5 * upload_bytes[0]),
        Figure(AREA, "upload of 256 KB into a stored snapshot (no sandbox)",
               {"upload 1": f"{_ms(aside_ms[0])}, {kb(aside_bytes[0])} written",
                last: f"{_ms(aside_ms[-1])}, {kb(aside_bytes[-1])} written"},
               "the last costs what the first does (≤ 1.5× bytes)", aside_bytes[-1] <= 1.5 * aside_bytes[0]),
    ]


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    print(table(measure(quick=quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
