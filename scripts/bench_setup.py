"""Benchmark: POST /setup with 1, 10 and 100 skills, storage 20 ms away (as R2 is).

moto server answers on loopback in well under a millisecond, which would hide every
sequential round trip; a proxy in front of it adds 20 ms to each request. Both run in a
child process, as R2 runs on other machines: in this process they would take the GIL and
the CPU from the code being measured. Prints the median
setup time per skill count and the 100-skill / 1-skill ratio (target: at most 3).

    .venv/bin/python -m scripts.bench_setup [--runs 5] [--delay 0.02]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def skill_text(i: int) -> str:
    """A flat skill of about 1.5 KB, a typical size for a markdown instruction file."""
    return f"# Skill {i}\n\nUse this when task {i} comes up.\n\n" + "".join(f"- step {n}: do the thing carefully.\n" for n in range(40))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to every storage request")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchlib.storage_process import remote_storage
    from tests.support.s3 import create_bucket, storage_settings

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, remote_storage(args.delay) as storage:
        client = create_bucket(storage_settings(storage.upstream, bucket))  # seeding skips the delay
        os.environ.update({
            "S3_ENDPOINT_URL": storage.url, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing",
            "S3_REGION": "auto", "SANDBOX_ROOT": str(Path(tmp) / "sandboxes"), "AWS_REGION": "us-east-1",
        })
        from chalice.test import Client

        from app import app

        results: dict[tuple[str, int], float] = {}

        def upload_direct(user: str, count: int) -> None:
            for i in range(count):
                client.put_object(Bucket=bucket, Key=f"users/{user}/skills/skill-{i:03d}.md", Body=skill_text(i).encode())

        def upload_api(http: Client, user: str, count: int) -> None:
            for i in range(count):
                response = http.http.post(f"/users/{user}/skills", body=json.dumps({"name": f"skill-{i:03d}.md", "content": skill_text(i)}),
                                          headers={"Content-Type": "application/json"})
                assert response.status_code == 200, response.body

        def timed_setup(http: Client, session: str, user: str, count: int) -> float:
            started = time.perf_counter()
            response = http.http.post(f"/setup/{session}?userId={user}")
            elapsed = time.perf_counter() - started
            body = json.loads(response.body)
            assert response.status_code == 200 and len(body["skillsLoaded"]) == count, body
            http.http.delete(f"/sandbox/{session}")
            return elapsed

        labels = {
            "api": "first setup, skills uploaded through the API (bundle current)",
            "direct": "first setup, skills written straight to the bucket (every file read, bundle rebuilt)",
            "warm": "same user again in this process",
        }
        with Client(app, stage_name="dev", project_dir=str(ROOT)) as http:
            timed_setup(http, "warmup", "nobody", 0)  # clients, pools, first sandbox
            for count in (1, 10, 100):
                timings: dict[str, list[float]] = {"api": [], "direct": [], "warm": []}
                for run in range(args.runs):
                    # Each run is a new user, so nothing of theirs is in this process's cache.
                    upload_api(http, f"api-{count}-{run}", count)
                    timings["api"].append(timed_setup(http, f"a-{count}-{run}", f"api-{count}-{run}", count))
                    upload_direct(f"direct-{count}-{run}", count)
                    timings["direct"].append(timed_setup(http, f"d-{count}-{run}", f"direct-{count}-{run}", count))
                    timings["warm"].append(timed_setup(http, f"w-{count}-{run}", f"api-{count}-0", count))
                for label, values in timings.items():
                    results[(label, count)] = statistics.median(values)
                    print(f"{label:6s} {count:3d} skills: median {results[(label, count)] * 1000:7.1f} ms over {args.runs} runs "
                          f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})  {labels[label]}")
        for label in labels:
            print(f"ratio 100/1 ({label}): {results[(label, 100)] / results[(label, 1)]:.2f} (target <= 3), "
                  f"storage delay {args.delay * 1000:.0f} ms per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
