"""Growth benchmark, skills: what an upload, a setup and a page of the skill list cost as a user's
skills go from a handful to a thousand (issue 22), with storage 20 ms away.

The skills are seeded straight into the bucket (moto itself, without the delay) in parallel, then
one list and one setup bring the derived objects (catalog, bundle) up to date, as they would
for any user whose files were written behind the API; only then is anything measured:

- an upload (`POST /users/{u}/skills`, a flat skill of about 1.5 KB): bytes written and read, the
  median of a few uploads, and what the next list and setup pay to fold it in;
- `POST /setup`: sequential storage round trips (the longest chain of requests each starting
  after the previous one was answered) and the median time, at 1 and 1,000 skills, beside the
  time moto itself takes to serve the listing setup reads (the stand-in's share of it);
- `GET /users/{u}/skills`: storage operations per page, from a process that has listed the user
  before (a warm Lambda container, the dev server) and from one that has not.

    .venv/bin/python -m scripts.benchlib.growth_skills [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scripts.benchlib.growth import Figure, Totals, kb, table
from scripts.benchlib.timing import critical_path, skill_text

ROOT = Path(__file__).resolve().parents[2]
DELAY = 0.02
UPLOADS = 3  # uploads measured per size (the median is shown)
SETUPS = 7  # setups timed per size, alternating (the median is shown: the machine is shared)


def measure(quick: bool = False) -> list[Figure]:
    """Run the skills area against moto behind a 20 ms proxy; return its figures."""
    sys.path.insert(0, str(ROOT))
    from scripts.benchlib.storage_process import remote_storage
    from tests.support.s3 import create_bucket, storage_settings

    sizes = (10, 100) if quick else (10, 100, 1000)
    big = sizes[-1]
    bucket = f"growth-skills-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, remote_storage(DELAY) as storage:
        seed_client = create_bucket(storage_settings(storage.upstream, bucket))
        os.environ.update({
            "S3_ENDPOINT_URL": storage.url, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing",
            "S3_REGION": "auto", "SANDBOX_ROOT": str(Path(tmp) / "sandboxes"), "AWS_REGION": "us-east-1",
        })
        from chalice.test import Client

        from app import app
        from chalicelib.config import Settings
        from chalicelib.container import get_container
        from chalicelib.services.skill_catalog import SkillCatalog

        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]

        def forget_catalog() -> None:
            """Drop the entries this process remembers, as another Lambda container would start."""
            container = get_container(Settings.from_env({**os.environ, **stage_env}))
            container.skills.catalog = container.sessions.skills.catalog = SkillCatalog(container.store)

        def seed(user: str, count: int) -> None:
            def put(i: int) -> None:
                seed_client.put_object(Bucket=bucket, Key=f"users/{user}/skills/skill-{i:04d}.md", Body=skill_text(i).encode())
            with ThreadPoolExecutor(max_workers=32) as pool:
                list(pool.map(put, range(count)))

        with Client(app, stage_name="dev", project_dir=str(ROOT)) as http:
            def call(method: str, path: str, body: Any = None) -> Any:
                kwargs: dict[str, Any] = {}
                if body is not None:
                    kwargs = {"body": json.dumps(body), "headers": {"Content-Type": "application/json"}}
                response = http.http.request(method, path, **kwargs)
                assert response.status_code == 200, (path, response.body[:300])
                return json.loads(response.body)

            def traffic_of(action: Callable[[], Any]) -> Totals:
                storage.take_traffic()
                action()
                return Totals.of(storage.take_traffic())

            def setup(session: str, user: str, count: int) -> tuple[float, int]:
                storage.take_log()
                started = time.perf_counter()
                body = call("POST", f"/setup/{session}?userId={user}")
                elapsed = time.perf_counter() - started
                chain = critical_path(storage.take_log())
                assert len(body["skillsLoaded"]) == count, len(body["skillsLoaded"])
                call("DELETE", f"/sandbox/{session}")
                return elapsed, chain

            call("POST", "/setup/warmup?userId=nobody")  # clients, pools, the first sandbox
            call("DELETE", "/sandbox/warmup")
            uploads: dict[int, list[Totals]] = {}
            folds_list: dict[int, Totals] = {}
            folds_setup: dict[int, Totals] = {}
            list_ops: dict[int, Totals] = {}
            cold_list_ops: dict[int, Totals] = {}
            for count in sizes:
                user = f"user-{count}"
                seed(user, count)
                call("GET", f"/users/{user}/skills")  # first touch: the catalog is built
                setup(f"first-{count}", user, count)  # and the bundle
                uploads[count] = []
                for n in range(UPLOADS):
                    name = f"extra-{n}.md"
                    uploads[count].append(traffic_of(lambda name=name: call("POST", f"/users/{user}/skills",
                                                                          {"name": name, "content": skill_text(10_000 + n)})))
                forget_catalog()  # the next list runs in "another process": it folds the uploads' entries
                folds_list[count] = traffic_of(lambda user=user: call("GET", f"/users/{user}/skills"))
                folds_setup[count] = traffic_of(lambda user=user, count=count: setup(f"fold-{count}", user, count + UPLOADS))
                list_ops[count] = traffic_of(lambda user=user: call("GET", f"/users/{user}/skills"))
                forget_catalog()
                cold_list_ops[count] = traffic_of(lambda user=user: call("GET", f"/users/{user}/skills"))

            seed("one-skill", 1)
            call("GET", "/users/one-skill/skills")
            setup("first-one", "one-skill", 1)
            timings: dict[int, list[tuple[float, int]]] = {1: [], big: []}
            for run in range(SETUPS):
                timings[1].append(setup(f"t1-{run}", "one-skill", 1))
                timings[big].append(setup(f"tb-{run}", f"user-{big}", big + UPLOADS))
            stand_in = statistics.median(stand_in_listing(storage.upstream, bucket, f"users/user-{big}/skills/")
                                         for _ in range(SETUPS))

    def per_upload(count: int) -> tuple[float, float]:
        return (statistics.median(t.sent for t in uploads[count]), statistics.median(t.received for t in uploads[count]))

    written = {c: per_upload(c)[0] for c in sizes}
    setup_time = {c: statistics.median(t for t, _ in timings[c]) for c in timings}
    setup_chain = {c: max(ch for _, ch in timings[c]) for c in timings}
    ops = {c: list_ops[c].class_a + list_ops[c].class_b for c in sizes}
    cold = {c: cold_list_ops[c].class_a + cold_list_ops[c].class_b for c in sizes}
    return [
        Figure("skills", "bytes written / read per upload (1.5 KB skill)",
               {f"{c} skills": f"{kb(per_upload(c)[0])} / {kb(per_upload(c)[1])}" for c in sizes},
               f"{big} ≤ 1.5× 10 written", written[big] <= 1.5 * written[10]),
        Figure("skills", "first list after 3 uploads, in another process: bytes written / read (the catalog folded)",
               {f"{c} skills": f"{kb(folds_list[c].sent)} / {kb(folds_list[c].received)}" for c in sizes},
               "(no target)", None),
        Figure("skills", "first setup after them, in the uploading process: bytes written / read (the bundle rebuilt)",
               {f"{c} skills": f"{kb(folds_setup[c].sent)} / {kb(folds_setup[c].received)}" for c in sizes},
               "(no target)", None),
        Figure("skills", "setup: sequential storage round trips",
               {f"{c} skill{'s' if c > 1 else ''}": str(setup_chain[c]) for c in (1, big)},
               "≤ 5 at any count", max(setup_chain.values()) <= 5),
        Figure("skills", "setup: median time",
               {f"{c} skill{'s' if c > 1 else ''}": f"{setup_time[c] * 1000:.0f} ms" for c in (1, big)}
               | {"ratio": f"{setup_time[big] / setup_time[1]:.2f}"},
               f"setup({big}) / setup(1) ≤ 2", setup_time[big] / setup_time[1] <= 2),
        Figure("skills", f"the stand-in alone: moto serving the listing setup reads at {big} skills (straight to it: no delay, no parsing)",
               {f"{big + UPLOADS:,} keys": f"{stand_in * 1000:.0f} ms ({stand_in / setup_time[1]:.2f}× setup(1))"},
               "(no target: setup here waits for it, and moto serves the other requests behind it)", None),
        Figure("skills", "storage operations per skill-list page (a process that listed the user before)",
               {f"{c} skills": f"{ops[c]} ({list_ops[c].class_a} A + {list_ops[c].class_b} B)" for c in sizes},
               "1 per page", max(ops.values()) <= 1),
        Figure("skills", "storage operations per skill-list page (a process that has not: one round trip)",
               {f"{c} skills": f"{cold[c]} ({cold_list_ops[c].class_a} A + {cold_list_ops[c].class_b} B)" for c in sizes},
               "1 per page", max(cold.values()) <= 1),
    ]


def stand_in_listing(upstream: str, bucket: str, prefix: str) -> float:
    """Seconds moto takes to serve every page of a prefix's listing, over plain HTTP on loopback
    (no proxy, no client parsing): what setup waits for at least, whatever the product does."""
    started = time.perf_counter()
    after = ""
    while True:
        query = urllib.parse.urlencode({"list-type": "2", "prefix": prefix, "max-keys": "1000", "start-after": after})
        with urllib.request.urlopen(f"{upstream}/{bucket}?{query}", timeout=30) as response:
            body = response.read()
        keys = re.findall(rb"<Key>([^<]*)</Key>", body)
        if b"<IsTruncated>true</IsTruncated>" not in body or not keys:
            return time.perf_counter() - started
        after = keys[-1].decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 and 100 skills only (under a minute)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(table(measure(quick=args.quick)))
    print(f"\n({time.perf_counter() - started:.0f} s, storage {DELAY * 1000:.0f} ms away)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
