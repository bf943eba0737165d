"""Benchmark: POST /setup with 1, 10 and 100 skills, storage 20 ms away (as R2 is).

moto server answers on loopback in well under a millisecond, which would hide every
sequential round trip; a proxy in front of it adds 20 ms to each request. Both run in a
child process, as R2 runs on other machines: in this process they would take the GIL and
the CPU from the code being measured. Prints the median
setup time per skill count and the 100-skill / 1-skill ratio (target: at most 3).

    .venv/bin/python -m scripts.bench_setup [--runs 5] [--delay 0.02]

--production benchmarks the production path instead: ENVIRONMENT=production, sessions on a
sandbox host in its own process (SANDBOX_URL), the user's prefix mounted with s3fs through the
same 20 ms proxy (`r2_mount`), 1 vs 100 skills (target: ratio at most 1.5). It counts the
storage requests of each setup, the API's and s3fs's, and the critical path: the longest chain
of storage requests each starting after the previous one was answered.
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

from scripts.benchlib.timing import critical_path, skill_text

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to every storage request")
    parser.add_argument("--production", action="store_true", help="r2_mount on a remote sandbox host (needs root, s3fs, /dev/fuse)")
    args = parser.parse_args(argv)
    if args.production:
        return production(args.runs, args.delay)

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
            "api": "first setup, skills uploaded through the API in this process (their bodies held; it builds the bundle)",
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


# The User-Agent product of the API's storage requests (its clients are botocore's), told apart
# from s3fs's.
API_AGENT = "Botocore"


def production(runs: int, delay: float) -> int:
    """POST /setup in production: r2_mount on a sandbox host in its own process."""
    import shutil
    import subprocess


    sys.path.insert(0, str(ROOT))
    from scripts.benchlib.storage_process import remote_storage
    from tests.support.health import wait_for_health
    from tests.support.s3 import create_bucket, storage_settings
    from tests.support.sandbox_host import free_port

    if os.geteuid() != 0 or not shutil.which("s3fs") or not os.path.exists("/dev/fuse"):
        print("--production needs root, s3fs (apt-get install s3fs) and /dev/fuse", file=sys.stderr)
        return 1
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    token, port = uuid.uuid4().hex, free_port()
    with tempfile.TemporaryDirectory() as tmp, remote_storage(delay) as storage:
        client = create_bucket(storage_settings(storage.upstream, bucket, region="us-east-1"))
        host_env = {**os.environ, "SANDBOX_ROOT": str(Path(tmp) / "host"), "SANDBOX_TOKEN": token, "PORT": str(port),
                    "SANDBOX_HOST_BIND": "127.0.0.1"}
        host = subprocess.Popen([sys.executable, "-m", "sandbox_host"], cwd=ROOT, env=host_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_health(url, host, timeout=30)
            os.environ.update({
                "ENVIRONMENT": "production", "API_KEY": "bench", "SANDBOX_URL": url, "SANDBOX_TOKEN": token,
                "S3_ENDPOINT_URL": storage.url, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing",
                "R2_SECRET_ACCESS_KEY": "testing", "S3_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                "CORS_ALLOW_ORIGINS": "",
            })
            from chalice.test import Client

            from app import app

            auth = {"Authorization": "Bearer bench"}
            with Client(app, stage_name="prod", project_dir=str(ROOT)) as http:
                def timed_setup(session: str, user: str, count: int) -> tuple[float, list[tuple[float, float, str, str]]]:
                    storage.take_log()
                    started = time.perf_counter()
                    response = http.http.post(f"/setup/{session}?userId={user}", headers=auth)
                    elapsed = time.perf_counter() - started
                    requests = storage.take_log()
                    body = json.loads(response.body)
                    assert response.status_code == 200 and body["setupMethod"] == "r2_mount", body
                    assert len([p for p in body["skillsLoaded"] if p.count("/") == 4]) == count, body
                    assert http.http.delete(f"/sandbox/{session}", headers=auth).status_code == 200
                    return elapsed, requests

                for user, count in (("warmup", 1), *((f"u{count}", count) for count in (1, 100))):
                    for i in range(count):
                        client.put_object(Bucket=bucket, Key=f"users/{user}/skills/skill-{i:03d}.md", Body=skill_text(i).encode())
                timed_setup("warmup", "warmup", 1)  # clients, pools, the host's first sandbox
                medians: dict[int, float] = {}
                for count in (1, 100):
                    times, logs = [], []
                    for run in range(runs):
                        elapsed, requests = timed_setup(f"p-{count}-{run}", f"u{count}", count)
                        times.append(elapsed)
                        logs.append(requests)
                    medians[count] = statistics.median(times)
                    api = statistics.median(sum(1 for r in log if r[2] == API_AGENT) for log in logs)
                    mount = statistics.median(sum(1 for r in log if r[2] != API_AGENT) for log in logs)
                    chain = statistics.median(critical_path(log) for log in logs)
                    if os.environ.get("BENCH_TRACE"):
                        t0 = min(r[0] for r in logs[-1])
                        for r in sorted(logs[-1]):
                            print(f"    {(r[0] - t0) * 1000:6.1f} {(r[1] - t0) * 1000:6.1f} {r[2]:6s} {r[3][:90]}")
                    print(f"r2_mount {count:3d} skills: median {medians[count] * 1000:7.1f} ms over {runs} runs "
                          f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}); storage requests: "
                          f"{api:.0f} by the API, {mount:.0f} by s3fs; critical path {chain:.0f} round trips")
                print(f"ratio 100/1 (r2_mount, production): {medians[100] / medians[1]:.2f} (target <= 1.5), "
                      f"storage delay {delay * 1000:.0f} ms per request")
        finally:
            host.terminate()
            try:
                host.wait(timeout=20)
            except subprocess.TimeoutExpired:
                host.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
