"""Benchmark: memory and processes per session on one sandbox host, idle and busy.

Starts `python -m sandbox_host` as its own process, opens `--sessions` sessions, and measures
the host's whole process tree (the server, bwrap, shells, commands) by proportional set size
(PSS, from /proc/<pid>/smaps_rollup: shared pages split between their users, so the sum is
what the machine really spends):

- empty: the host with no session
- idle: each session made, a skill written, its bash tool started (`true` ran), nothing running
- busy: each session running a Python command at once (`--busy-command`), sampled mid-run

Prints the totals and the figures per session.

    .venv/bin/python -m scripts.bench_host_capacity [--sessions 10]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from chalicelib.sandbox.process import descendants  # noqa: E402 - after the path is set

BUSY = "python3 -c \"import time; data = [str(i) * 8 for i in range(300000)]; time.sleep(4)\""


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(pid: int) -> tuple[int, float]:
    """(processes, MiB of PSS) of the host's process tree."""
    pids = [pid, *descendants(pid)]
    return len(pids), sum(pss_kib(p) for p in pids) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--busy-command", default=BUSY)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.support.health import wait_for_health
    from tests.support.sandbox_host import free_port

    token = secrets.token_urlsafe(16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SANDBOX_TOKEN": token, "PORT": str(port), "SANDBOX_HOST_BIND": "127.0.0.1", "SANDBOX_ROOT": tmp}
        host = subprocess.Popen([sys.executable, "-m", "sandbox_host"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_health(url, host, timeout=30)
            time.sleep(1)
            empty = measure(host.pid)
            with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
                for i in range(args.sessions):
                    http.post(f"/sessions/cap-{i}", json={}).raise_for_status()
                    http.put(f"/sessions/cap-{i}/files", json={"files": {"/workspace/.claude/skills/notes.md": "IyBOb3Rlcw=="}}).raise_for_status()
                    http.post(f"/sessions/cap-{i}/bash", json={"command": "true"}).raise_for_status()
                time.sleep(1)
                idle = measure(host.pid)

                def run(i: int) -> None:
                    http.post(f"/sessions/cap-{i}/bash", json={"command": args.busy_command, "timeout": 60}).raise_for_status()

                threads = [threading.Thread(target=run, args=(i,)) for i in range(args.sessions)]
                for thread in threads:
                    thread.start()
                peak = (0, 0.0)
                deadline = time.monotonic() + 3.5
                while time.monotonic() < deadline:
                    sample = measure(host.pid)
                    if sample[1] > peak[1]:
                        peak = sample
                    time.sleep(0.25)
                for thread in threads:
                    thread.join()
        finally:
            host.terminate()
            host.wait(timeout=30)

    n = args.sessions
    print(f"sandbox host process tree, {n} sessions (PSS: shared pages split between processes)")
    print(f"  empty host:         {empty[0]:4d} processes {empty[1]:8.1f} MiB")
    print(f"  {n} idle sessions:  {idle[0]:4d} processes {idle[1]:8.1f} MiB   -> per idle session: "
          f"{(idle[0] - empty[0]) / n:.1f} processes, {(idle[1] - empty[1]) / n:.1f} MiB")
    print(f"  {n} busy sessions:  {peak[0]:4d} processes {peak[1]:8.1f} MiB   -> per busy session: "
          f"{(peak[0] - empty[0]) / n:.1f} processes, {(peak[1] - empty[1]) / n:.1f} MiB")
    print(f"  busy command: {args.busy_command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
