"""Benchmark: what the local gateway costs under abuse and load, as ./scripts/dev runs it.

1. Memory: a 200 MB chunked POST is refused (413) while it streams; the server's resident
   memory is read from /proc before and after.
2. Interrupts under load: N turns stream at once (the fake model talks until stopped); one is
   interrupted, and the time until its `status: interrupting` and its `result` is measured.

    .venv/bin/python -m scripts.bench_gateway [--turns 12] [--body-mb 200]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=12, help="turns streaming at once (default 12, more than 8)")
    parser.add_argument("--body-mb", type=int, default=200, help="size of the refused upload (default 200 MB)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import httpx
    from websockets.sync.client import connect

    from scripts.benchlib.gateway_process import running_gateway
    from tests.fakes.fake_anthropic import Endless, FakeAnthropic
    from tests.support.gateway import receive_until

    with tempfile.TemporaryDirectory() as tmp, FakeAnthropic() as fake, running_gateway(tmp, fake.url) as gateway:
        url = gateway.url
        before = _rss_mib(gateway.proc.pid)
        status = _stream_body(gateway.port, args.body_mb * 1024 * 1024)
        print(f"refused upload of {args.body_mb} MB: answered {status!r}; server memory "
              f"{before:.0f} MiB -> {_rss_mib(gateway.proc.pid):.0f} MiB")

        fake.script(*[Endless(delta="word ", delay=0.2, max_deltas=3000) for _ in range(args.turns)])
        setups = [httpx.post(f"{url}/setup/bench-{n}?userId=bench{n}", timeout=60).json() for n in range(args.turns)]
        with ExitStack() as stack:
            sockets = [stack.enter_context(connect(f"{s['websocketUrl']}&token={s['token']}")) for s in setups]
            for ws in sockets:
                ws.send(json.dumps({"action": "message", "prompt": "talk"}))
            for ws in sockets:
                receive_until(ws, "stream", timeout=60)
            target = sockets[-1]
            sent = time.monotonic()
            target.send(json.dumps({"action": "interrupt"}))
            acknowledged = None
            for frame in receive_until(target, "result", timeout=60):
                if frame["event"] == "status" and frame.get("status") == "interrupting" and acknowledged is None:
                    acknowledged = time.monotonic() - sent
            ended = time.monotonic() - sent
            print(f"{args.turns} turns streaming: interrupt acknowledged after {1000 * (acknowledged or -1):.0f} ms, "
                  f"turn ended after {1000 * ended:.0f} ms")
            for ws in sockets[:-1]:
                ws.send(json.dumps({"action": "interrupt"}))
            for ws in sockets[:-1]:
                receive_until(ws, "result", timeout=60)
    return 0


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _stream_body(port: int, size: int) -> str:
    """Stream `size` bytes chunked until the server answers; return its status line."""
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /users/bench/conversations HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent = 0
        sock.setblocking(False)
        while sent < size:
            try:
                data = sock.recv(4096)
                if data:
                    return data.split(b"\r\n", 1)[0].decode()
            except BlockingIOError:
                pass
            try:
                sock.setblocking(True)
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sock.setblocking(False)
            except OSError:
                break
            sent += len(piece)
        sock.setblocking(True)
        sock.settimeout(30)
        try:
            return sock.recv(4096).split(b"\r\n", 1)[0].decode() or "(connection closed)"
        except OSError as exc:
            return f"(no answer: {exc})"


if __name__ == "__main__":
    sys.exit(main())
