"""moto server behind the latency proxy, in a child process, as a stand-in for a remote R2.

R2 spends its own CPU, not ours. Run in the benchmark's own process, moto and the proxy
would compete with the code under test for the GIL and for the 2 cores, and a benchmark
would time moto's request parsing instead of our round trips.

    with remote_storage(delay=0.02) as storage:
        storage.url        # proxied endpoint: every request pays `delay`
        storage.upstream   # moto server itself, for seeding data without the delay
        storage.take_log() # the proxied requests since the last call: (arrived, answered, client, request)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scripts.benchlib.latency_proxy import Traffic

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RemoteStorage:
    """Where the child process listens."""

    url: str
    upstream: str
    child: subprocess.Popen[str] | None = None

    def take_log(self) -> list[tuple[float, float, str, str]]:
        """The requests the proxy served since the last call (and forget them)."""
        assert self.child is not None and self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write("log\n")
        self.child.stdin.flush()
        return [tuple(entry) for entry in json.loads(self.child.stdout.readline())]  # type: ignore[misc]

    def take_traffic(self) -> list[Traffic]:
        """What the requests served since the last call moved (and forget them)."""
        assert self.child is not None and self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write("traffic\n")
        self.child.stdin.flush()
        return [Traffic(*entry) for entry in json.loads(self.child.stdout.readline())]


@contextmanager
def remote_storage(delay: float) -> Iterator[RemoteStorage]:
    """Start moto server and the latency proxy in a child process; stop both on exit."""
    child = subprocess.Popen(
        [sys.executable, "-m", "scripts.benchlib.storage_process", str(delay)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError("the storage child process exited before it printed its address; run it alone to see why")
        ready = json.loads(line)
        yield RemoteStorage(url=ready["url"], upstream=ready["upstream"], child=child)
    finally:
        child.stdin.close()  # the child's signal to stop
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _serve(delay: float) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    from scripts.benchlib.latency_proxy import LatencyProxy  # noqa: PLC0415 - only in the child

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    upstream = f"http://{host}:{port}"
    try:
        proxy = LatencyProxy(upstream, delay=delay)
        with proxy as url:
            print(json.dumps({"url": url, "upstream": upstream}), flush=True)
            for line in sys.stdin:  # ends when the parent closes our stdin or dies
                if line.strip() == "log":
                    print(json.dumps(proxy.take_log()), flush=True)
                elif line.strip() == "traffic":
                    print(json.dumps(proxy.take_traffic()), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    _serve(float(sys.argv[1]))
