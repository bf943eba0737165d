"""Benchmark: how long a REST call takes to answer when storage stops answering.

Runs the app (chalice.test.Client) against moto server behind the fault proxy of
tests/support/fault_proxy.py, with the shipped storage timeouts (or the ones in the
environment: STORAGE_CONNECT_TIMEOUT, STORAGE_READ_TIMEOUT, STORAGE_MAX_ATTEMPTS). For each
scenario the proxy holds every storage request from a given point on (a hung endpoint: the
connection is accepted, no answer comes), and the script prints the status and the seconds
until the API answered. API Gateway gives up at 29 s; the target is 25 s.

    .venv/bin/python -m scripts.bench_storage_hang
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKILL_MD = "---\nname: pdf-tools\ndescription: PDFs. Use for PDFs.\n---\nbody"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from chalice.test import Client

    from tests.support.fault_proxy import FaultProxy, FaultRule
    from tests.support.s3 import create_bucket, moto_server, storage_settings

    with tempfile.TemporaryDirectory() as tmp, moto_server() as upstream, FaultProxy(upstream) as proxy:
        import app as app_module

        client = Client(app_module.app, stage_name="dev", project_dir=str(ROOT))
        scenarios = [
            # (what, method, path, body, matching requests let through before the hang)
            ("GET settings, storage hung from the start", "GET", "/users/u/settings", None, 0),
            ("PATCH settings, hung after its read", "PATCH", "/users/u/settings", {"maxTurns": 4}, 1),
            ("POST folder skill, hung from the start", "POST", "/users/u/skills", {"name": "pdf-tools", "files": {"SKILL.md": SKILL_MD}}, 0),
            ("POST folder skill, hung after its files", "POST", "/users/u/skills",
             {"name": "pdf-tools", "files": {"SKILL.md": SKILL_MD, "x.py": "1"}}, 4),
            ("GET conversations, hung from the start", "GET", "/users/u/conversations", None, 0),
            ("POST setup, hung from the start", "POST", "/setup/s-hang?userId=u", None, 0),
            ("POST setup, hung after its reads", "POST", "/setup/s-hang?userId=u", None, 4),
        ]
        print(f"storage limits: connect {os.environ.get('STORAGE_CONNECT_TIMEOUT', '2.0')} s, "
              f"read {os.environ.get('STORAGE_READ_TIMEOUT', '5.0')} s, attempts {os.environ.get('STORAGE_MAX_ATTEMPTS', '3')}")
        for what, method, path, body, skip in scenarios:
            # A fresh bucket per scenario is a fresh configuration, so no fail-fast state carries over.
            bucket = f"hang-{uuid.uuid4().hex[:8]}"
            create_bucket(storage_settings(upstream, bucket))
            os.environ.update({
                "S3_ENDPOINT_URL": proxy.url, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing",
                "R2_SECRET_ACCESS_KEY": "testing", "S3_REGION": "auto", "AWS_REGION": "us-east-1",
                "SANDBOX_ROOT": str(Path(tmp) / "sandboxes"), "DATA_DIR": str(Path(tmp) / "data"),
            })
            proxy.clear()
            held_before = proxy.fired("hang")
            proxy.add(FaultRule("*", f"/{bucket}", action="hang", seconds=120, times=None, skip=skip))
            started = time.monotonic()
            response = client.http.request(
                method, path, headers={"Content-Type": "application/json"}, body=json.dumps(body).encode() if body else b""
            )
            elapsed = time.monotonic() - started
            code = json.loads(response.body).get("code", "") if response.status_code >= 400 else ""
            print(f"  {what:45s} -> {response.status_code} {code:20s} {elapsed:5.1f} s "
                  f"(Retry-After {response.headers.get('Retry-After', '-')}, {proxy.fired('hang') - held_before} storage requests held)")
            proxy.clear()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
