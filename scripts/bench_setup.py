"""Benchmark: POST /setup with 1, 10 and 100 skills, storage 20 ms away (as R2 is).

moto server answers on loopback in well under a millisecond, which would hide every
sequential round trip; a proxy in front of it adds 20 ms to each request. Prints the median
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to every storage request")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    from scripts.benchlib.latency_proxy import LatencyProxy
    from tests.support.s3 import create_bucket, storage_settings

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    upstream = f"http://{host}:{port}"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client = create_bucket(storage_settings(upstream, bucket))
    with tempfile.TemporaryDirectory() as tmp, LatencyProxy(upstream, delay=args.delay) as proxied:
        os.environ.update({
            "S3_ENDPOINT_URL": proxied, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing",
            "S3_REGION": "auto", "SANDBOX_ROOT": str(Path(tmp) / "sandboxes"), "AWS_REGION": "us-east-1",
        })
        from chalice.test import Client

        from app import app

        results: dict[tuple[str, int], float] = {}

        def upload(user: str, count: int) -> None:
            for i in range(count):
                client.put_object(Bucket=bucket, Key=f"users/{user}/skills/skill-{i:03d}.md", Body=f"# Skill {i}\n\nBody {i}.".encode())

        def timed_setup(http: Client, session: str, user: str, count: int) -> float:
            started = time.perf_counter()
            response = http.http.post(f"/setup/{session}?userId={user}")
            elapsed = time.perf_counter() - started
            body = json.loads(response.body)
            assert response.status_code == 200 and len(body["skillsLoaded"]) == count, body
            http.http.delete(f"/sandbox/{session}")
            return elapsed

        with Client(app, stage_name="dev", project_dir=str(ROOT)) as http:
            timed_setup(http, "warmup", "nobody", 0)  # clients, pools, first sandbox
            for count in (1, 10, 100):
                # cold: a user this process has never loaded (every file is fetched)
                cold = []
                for run in range(args.runs):
                    user = f"cold-{count}-{run}"
                    upload(user, count)
                    cold.append(timed_setup(http, f"c-{count}-{run}", user, count))
                # warm: the same user again (file bodies whose ETag did not change come from memory)
                warm = [timed_setup(http, f"w-{count}-{run}", f"cold-{count}-0", count) for run in range(args.runs)]
                for label, timings in (("cold", cold), ("warm", warm)):
                    results[(label, count)] = statistics.median(timings)
                    print(f"{label} setup with {count:3d} skills: median {results[(label, count)] * 1000:7.1f} ms over "
                          f"{args.runs} runs (min {min(timings) * 1000:.1f}, max {max(timings) * 1000:.1f})")
        for label in ("cold", "warm"):
            print(f"ratio 100/1 ({label}): {results[(label, 100)] / results[(label, 1)]:.2f} (target <= 3), "
                  f"storage delay {args.delay * 1000:.0f} ms per request")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
