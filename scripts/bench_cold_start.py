"""Benchmark: a REST Lambda's cold start, in the deployment package, against a bare baseline.

Builds the package with ./scripts/chalice (or takes --zip), unzips it, and runs each cold start
in a fresh interpreter that sees only the package and writes no pycs (`python -S -I -B`, as in
Lambda's read-only /var/task), with the prod stage's environment and AWS_LAMBDA_FUNCTION_NAME set:
`import app`, then the first GET /health and GET /users/u/skills, with S3 on moto server in a
child process. The user has one skill, uploaded through the app's own POST route first. The
baseline is the least any Chalice app on S3 pays (issue 16's): `import chalice, boto3`, a Chalice
app and an S3 client created at import, then the same two routes, the second one listing the
same prefix, from the same package. Runs are paired (app and baseline back to back, alternating
which goes first) and the ratios are taken per pair. Prints CPU time and wall time, min / median
/ max, and what the same two requests cost again once warm (the work itself, without first-use
costs). Targets: import and first requests each <= 1.3x the baseline.

    .venv/bin/python -m scripts.bench_cold_start [--runs 15] [--zip out/deployment.zip] [--plain]

--plain measures what plain `chalice package` builds (every botocore model, no pycs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "scripts" / "benchlib" / "lambda_child.py"
METRICS = (("importCpu", "import, CPU"), ("importWall", "import, wall"),
           ("requestCpu", "first 2 requests, CPU"), ("requestWall", "first 2 requests, wall"),
           ("totalCpu", "cold start total, CPU"), ("totalWall", "cold start total, wall"),
           ("warmCpu", "same 2 requests warm, CPU"))


def build_package(out: Path, plain: bool) -> Path:
    """deployment.zip from ./scripts/chalice package (or plain chalice package)."""
    command = [str(Path(sys.executable).with_name("chalice"))] if plain else [sys.executable, "-m", "scripts.lambda_package"]
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    subprocess.run([*command, "package", "--stage", "prod", str(out)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return out / "deployment.zip"


def cold_start(package: Path, which: str, env: dict[str, str]) -> dict[str, Any]:
    """One fresh interpreter's timings."""
    # -B: /var/task is read-only, so a package without pycs compiles its imports at every cold start.
    result = subprocess.run([sys.executable, "-S", "-I", "-B", str(CHILD), str(package), which], env=env,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"the {which} cold start failed:\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    return dict(json.loads(lines[-1])) if lines else {}


def spread(values: list[float], unit: float = 1000) -> str:
    return f"{min(values) * unit:7.1f} {statistics.median(values) * unit:7.1f} {max(values) * unit:7.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="pairs of cold starts")
    parser.add_argument("--zip", type=Path, help="an existing deployment.zip (default: build one)")
    parser.add_argument("--plain", action="store_true", help="build with plain `chalice package` instead")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchlib.storage_process import remote_storage
    from tests.support.s3 import create_bucket, storage_settings

    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        zip_path = args.zip or build_package(Path(tmp) / "out", args.plain)
        package = Path(tmp) / "task"
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(package)
            infos = archive.infolist()
        print(f"package: {zip_path.stat().st_size / 1e6:.1f} MB zipped, {sum(i.file_size for i in infos) / 1e6:.1f} MB "
              f"unzipped, {len(infos)} files, {sum(i.filename.endswith('.pyc') for i in infos)} pycs")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        with remote_storage(delay=0) as storage:
            create_bucket(storage_settings(storage.upstream, bucket, region="us-east-1"))
            env = {
                "PATH": os.environ.get("PATH", ""), "HOME": tmp, "LANG": "C.UTF-8",
                # What the prod stage's Lambda sees (its secrets already in the environment).
                "AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "ENVIRONMENT": "production",
                "S3_ENDPOINT_URL": storage.upstream, "R2_BUCKET": bucket, "S3_REGION": "us-east-1",
                "R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing",
                "SANDBOX_URL": "http://127.0.0.1:9", "SANDBOX_TOKEN": "bench", "API_KEY": "bench",
            }
            runs: dict[str, list[dict[str, Any]]] = {"app": [], "baseline": []}
            cold_start(package, "seed", env)  # one skill, uploaded through the app; fills the page cache
            for run in range(args.runs):
                for which in (("app", "baseline") if run % 2 == 0 else ("baseline", "app")):
                    runs[which].append(cold_start(package, which, env))
        if any(r["anthropic"] for r in runs["app"]):
            print("warning: import app loaded anthropic")
        print(f"\n{args.runs} paired cold starts, ms as min / median / max (fresh interpreter each, package only on sys.path)")
        print(f"{'':26s} {'app':>23s}   {'baseline':>23s}   ratio of pair (min / median / max)")
        for key, label in METRICS:
            app_values = [r[key] for r in runs["app"]]
            base_values = [r[key] for r in runs["baseline"]]
            ratios = [a / b for a, b in zip(app_values, base_values)]
            print(f"{label:26s} {spread(app_values)}   {spread(base_values)}   "
                  f"{min(ratios):5.2f} {statistics.median(ratios):5.2f} {max(ratios):5.2f}")
        for key, label in (("modules", "modules after import"), ("peakMiB", "peak RSS, MiB")):
            print(f"{label:26s} {statistics.median(r[key] for r in runs['app']):7.0f} (app)   "
                  f"{statistics.median(r[key] for r in runs['baseline']):7.0f} (baseline)")
        print("targets: import CPU and first-requests CPU each <= 1.3x the baseline (median of pair ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
