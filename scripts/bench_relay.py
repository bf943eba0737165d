"""Benchmark: the local gateway's relay overhead per streamed event.

The fake Messages API streams a 2,000-delta answer; for each delta the time from the fake
model writing it to the websocket client receiving its `stream` frame is measured (same
process, same monotonic clock). The path is the production one: SDK → agent loop → turn
runner → app.websocket_api.send (botocore post_to_connection) → management API → websocket.

    .venv/bin/python -m scripts.bench_relay [--deltas 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deltas", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=0.005,
                        help="seconds between deltas from the fake model (default 0.005: 200 deltas/s, faster than "
                             "Claude streams; 0 sends them all at once and measures queueing, not relay)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import logging

    logging.disable(logging.INFO)
    import httpx
    from websockets.sync.client import connect

    from scripts.benchlib.gateway_process import running_gateway
    from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text
    from tests.support.gateway import receive_until

    # The gateway runs as ./scripts/dev does, in its own process; CLOCK_MONOTONIC is shared.
    with tempfile.TemporaryDirectory() as tmp, FakeAnthropic() as fake, running_gateway(tmp, fake.url) as gateway:
        url = gateway.url
        setup = httpx.post(f"{url}/setup/bench?userId=bench", timeout=60).json()
        # Unique, equal-width pieces (one per delta), so a merged frame can be split back into them.
        text = "".join(f"{i:05d} " for i in range(args.deltas))
        fake.script(Reply([Text("warm up")]), Reply([Text(text, chunks=args.deltas)], delay=args.interval))
        with connect(f"{setup['websocketUrl']}&token={setup['token']}", max_size=2**24) as ws:
            ws.send(json.dumps({"action": "message", "prompt": "warm up"}))
            receive_until(ws, "result")
            fake.emitted.clear()
            fake.record_emits = True
            ws.send(json.dumps({"action": "message", "prompt": "go"}))
            received: dict[str, float] = {}  # piece → when the frame carrying it arrived
            frames = 0
            for _ in range(args.deltas * 3):
                frame = json.loads(ws.recv(timeout=60))
                if frame["event"] == "stream":
                    arrived = time.monotonic()
                    frames += 1
                    for piece in frame["content"].split(" ")[:-1]:
                        received[piece + " "] = arrived
                if frame["event"] == "result":
                    break
    assert len(fake.emitted) == len(received) == args.deltas, (len(fake.emitted), len(received))
    latencies = sorted((received[piece] - emitted) * 1000 for emitted, piece in fake.emitted)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"relay overhead over {args.deltas} streamed deltas: median {statistics.median(latencies):.2f} ms, "
          f"p99 {p99:.2f} ms, max {latencies[-1]:.2f} ms, model pacing {args.interval * 1000:g} ms/delta, "
          f"{frames} stream frames (target: median < 2 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
