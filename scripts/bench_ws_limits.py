"""Benchmark: how long one user waits for a `get_history` answer while another abuses the websocket,
on the local gateway as ./scripts/dev runs it (its own process).

1. Quiet: Bob's get_history with nothing else going on.
2. Clear storm: Alice's turn runs; she sends N `clear` frames (WS_FRAMES_PER_SECOND raised so the
   storm itself is measured, not the rate cap); then Bob sends get_history. Before issue 23 each
   clear held one of the 8 frame workers for up to 3 s.
3. Frame flood: Alice sends M get_history frames as fast as the socket takes them (the default
   WS_FRAMES_PER_SECOND); then Bob sends get_history. Alice's refusals and her connection's
   close are counted.

    .venv/bin/python -m scripts.bench_ws_limits [--clears 64] [--flood 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clears", type=int, default=64, help="clear frames in the storm (default 64)")
    parser.add_argument("--flood", type=int, default=3000, help="get_history frames in the flood (default 3000)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.fakes.fake_anthropic import Endless, FakeAnthropic

    with FakeAnthropic() as fake:
        fake.script(*[Endless(delta="word ", delay=0.05, max_deltas=4000) for _ in range(4)])
        with _gateway(fake.url, WS_FRAMES_PER_SECOND="10000") as url:
            alice, bob = _socket(url, "bench-storm-a", "storm-alice"), _socket(url, "bench-storm-b", "storm-bob")
            print(f"quiet: Bob's get_history answered in {_history_seconds(bob):.3f} s")
            alice.send(json.dumps({"action": "message", "prompt": "talk"}))
            _until(alice, lambda f: f["event"] == "stream", 60)
            for _ in range(args.clears):
                alice.send(json.dumps({"action": "clear"}))
            time.sleep(0.5)  # every clear has reached the server before Bob asks
            waited = _history_seconds(bob)
            sent = time.monotonic()
            # Answered: `clearing`, `cleared`, or (before issue 23) `turn_in_progress` after 3 s.
            answered = _until_count(alice, lambda f: f.get("status") == "clearing" or f["event"] in ("cleared", "error"),
                                    args.clears, 60)
            print(f"clear storm ({args.clears} clear frames during a turn): Bob's get_history answered in "
                  f"{waited:.3f} s; Alice's clears answered: {answered} ({time.monotonic() - sent:.3f} s after Bob's)")
            alice.send(json.dumps({"action": "interrupt"}))
            with suppress(TimeoutError):
                _until(alice, lambda f: f["event"] in ("cleared", "result"), 60)
            alice.close()
            bob.close()
        with _gateway(fake.url) as url:
            alice, bob = _socket(url, "bench-flood-a", "flood-alice"), _socket(url, "bench-flood-b", "flood-bob")
            _history_seconds(bob)
            started, sent = time.monotonic(), 0
            with suppress(Exception):
                for _ in range(args.flood):
                    alice.send(json.dumps({"action": "get_history"}))
                    sent += 1
            flooded = time.monotonic() - started
            waited = _history_seconds(bob)
            kinds: dict[str, int] = {}
            with suppress(Exception):
                for _ in range(args.flood + 10):
                    frame = json.loads(alice.recv(timeout=5))
                    key = frame.get("code") or frame["event"]
                    kinds[key] = kinds.get(key, 0) + 1
            print(f"frame flood ({sent} of {args.flood} get_history frames sent in {flooded:.2f} s before the close): "
                  f"Bob's get_history answered in {waited:.3f} s; Alice got {kinds}")
            bob.close()
    return 0


class _gateway:
    """The gateway in its own process with extra environment (restored after)."""

    def __init__(self, model_url: str, **env: str) -> None:
        self.model_url, self.env = model_url, env

    def __enter__(self) -> str:
        from scripts.benchlib.gateway_process import running_gateway

        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        self.tmp = tempfile.TemporaryDirectory()
        self.context = running_gateway(self.tmp.name, self.model_url)
        return self.context.__enter__().url

    def __exit__(self, *exc: object) -> None:
        self.context.__exit__(None, None, None)
        self.tmp.cleanup()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _socket(url: str, session: str, user: str) -> Any:
    import httpx
    from websockets.sync.client import connect

    setup = httpx.post(f"{url}/setup/{session}?userId={user}", timeout=60).json()
    return connect(f"{setup['websocketUrl']}&token={setup['token']}", max_size=None).__enter__()


def _history_seconds(ws: Any) -> float:
    sent = time.monotonic()
    ws.send(json.dumps({"action": "get_history"}))
    _until(ws, lambda f: f["event"] == "history", 120)
    return time.monotonic() - sent


def _until(ws: Any, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if done(frame):
            return frame  # type: ignore[no-any-return]


def _until_count(ws: Any, counted: Any, count: int, timeout: float) -> int:
    deadline, seen = time.monotonic() + timeout, 0
    with suppress(TimeoutError):
        while seen < count and time.monotonic() < deadline:
            seen += bool(counted(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))))
    return seen


if __name__ == "__main__":
    raise SystemExit(main())
