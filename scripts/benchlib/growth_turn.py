"""Turn costs that must not grow with the user's data: turn start, operations per message, polling.

Against moto behind a 20 ms latency proxy (`remote_storage(0.02)`, a child process), with the
real websocket handlers and turn runner in this process (the Lambda handlers invoked through
chalice's test client, the runner on a thread) and the scripted Messages API server of the
tests (tests/fakes/fake_anthropic.py):

- **turn start**: from the `message` frame's handler being invoked to the model request
  arriving at the fake API, the wall time and the longest chain of storage requests each sent
  after the previous one was answered (sequential round trips);
- **operations per plain message** (one reply, no tool call), R2 Class A / Class B, with the
  poller and lease renewals set out of the way as in tests/integration/test_turn_ops.py;
- **bytes read per poll** of the running turn's watcher (TURN_POLL_SECONDS=0.5) while the
  model streams a reply for about two seconds.

Each at 1 skill and at 200 (50 with `quick`), skills written straight to the bucket before
/setup. Runnable alone: `.venv/bin/python -m scripts.benchlib.growth_turn [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.benchlib.growth import Figure, Totals, kb, table
from scripts.benchlib.storage_process import ROOT, RemoteStorage, remote_storage
from scripts.benchlib.timing import critical_path

DELAY = 0.02
#: R2's prices per million operations (USD), for the monthly figure.
CLASS_A_PER_M = 4.50
CLASS_B_PER_M = 0.36
#: The README's load: 1,000 users at 50 messages a day, 30 days.
MESSAGES_A_MONTH = 1_000 * 50 * 30
#: A plain message before this rework (tests/integration/test_turn_ops.py at 829b211).
BEFORE = (11, 10)


def monthly(a: int, b: int) -> float:
    """Operations' cost a month for 1,000 users at 50 plain messages a day."""
    return MESSAGES_A_MONTH * (a * CLASS_A_PER_M + b * CLASS_B_PER_M) / 1e6


def skill_text(i: int) -> str:
    return f"---\nname: skill-{i:03d}\ndescription: Does task number {i} for the user, carefully.\n---\n# Skill {i}\n\n" + "step\n" * 40


@contextmanager
def harness(storage: RemoteStorage, bucket: str, tmp: Path, env: dict[str, str]) -> Iterator[Any]:
    """The app's websocket handlers and runner (tests/support/lambda_ws.py) on the remote store."""
    import pytest

    from tests.support.lambda_ws import lambda_harness

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"S3_ENDPOINT_URL": storage.url, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "testing",
                           "R2_SECRET_ACCESS_KEY": "testing", "S3_REGION": "auto", "AWS_REGION": "us-east-1",
                           "STORAGE_BACKEND": "s3", **env}.items():
            mp.setenv(key, value)
        with lambda_harness(tmp, mp) as parts:
            yield parts


class Turns:
    """Sends `message` frames on one connection and times them against the fake model."""

    def __init__(self, parts: Any, storage: RemoteStorage, session: str, connection: str) -> None:
        self.client, self.management, self.fake, self.dispatcher = parts
        self.storage = storage
        self.session = session
        self.connection = connection

    def send(self, reply: Any) -> tuple[float, float]:
        """One message; (when the handler was invoked, when the model request arrived)."""
        from tests.support.lambda_ws import ws_event

        arrived: list[float] = []

        def respond(_: dict[str, Any]) -> Any:
            arrived.append(time.monotonic())
            return reply

        self.management.sent.clear()
        self.fake.script(respond)
        sent = time.monotonic()
        self.client.lambda_.invoke("ws_message", ws_event("$default", self.connection, json.dumps(
            {"action": "message", "prompt": "go", "messageId": uuid.uuid4().hex[:12], "sessionId": self.session})))
        self.management.wait_for(self.connection, "result", timeout=60)
        self.dispatcher.join(60)
        return sent, arrived[0]


def open_session(parts: Any, storage: RemoteStorage, user: str, session: str, skills: int, s3: Any, bucket: str) -> Turns:
    from tests.support.lambda_ws import ws_event

    for i in range(skills):
        s3.put_object(Bucket=bucket, Key=f"users/{user}/skills/skill-{i:03d}.md", Body=skill_text(i).encode())
    client = parts[0]
    response = client.http.post(f"/setup/{session}?userId={user}")
    assert response.status_code == 200, response.body
    token = json.loads(response.body)["token"]
    connection = f"c-{session}"
    accepted = client.lambda_.invoke("ws_connect", ws_event("$connect", connection, query={"sessionId": session, "token": token}))
    assert accepted.payload["statusCode"] == 200, accepted.payload
    return Turns(parts, storage, session, connection)


def measure(quick: bool = False) -> list[Figure]:
    """The turn's figures at 1 skill and at 200 (50 with `quick`)."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.fake_anthropic import Reply, Text
    from tests.support.s3 import create_bucket, storage_settings

    counts = (1, 50) if quick else (1, 200)
    runs = 3 if quick else 11
    starts: dict[int, list[tuple[int, float]]] = {}
    ops: dict[int, list[Totals]] = {}
    polls: dict[int, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp, remote_storage(DELAY) as storage:
        bucket = f"growth-turn-{uuid.uuid4().hex[:8]}"
        s3 = create_bucket(storage_settings(storage.upstream, bucket))  # seeding skips the delay
        # Turn start and operations: the poller and renewals out of the way (as test_turn_ops).
        with harness(storage, bucket, Path(tmp) / "a", {"TURN_POLL_SECONDS": "3600", "TURN_LEASE_SECONDS": "900"}) as parts:
            for count in counts:
                turns = open_session(parts, storage, f"user{count}", f"start{count}", count, s3, bucket)
                turns.send(Reply([Text("warm up", chunks=2)]))  # the process's first turn of the session
                starts[count], ops[count] = [], []
                for _ in range(runs):
                    storage.take_log()
                    storage.take_traffic()
                    sent, arrived = turns.send(Reply([Text("a plain reply of a few words", chunks=4)]))
                    log = storage.take_log()
                    ops[count].append(Totals.of(storage.take_traffic()))
                    window = [entry for entry in log if sent <= entry[0] <= arrived]
                    starts[count].append((critical_path(window), arrived - sent))
                    if os.environ.get("BENCH_TRACE"):
                        print(f"turn start {(arrived - sent) * 1000:.1f} ms, {critical_path(window)} round trips:")
                        for start, end, _, request in sorted(window):
                            print(f"  {(start - sent) * 1000:6.1f} → {(end - sent) * 1000:6.1f} ms  {request[:100]}")
                parts[0].http.delete(f"/sandbox/start{count}")
        # Polling: the watcher's ticks while the model streams for about two seconds.
        with harness(storage, bucket, Path(tmp) / "b", {"TURN_POLL_SECONDS": "0.5", "TURN_LEASE_SECONDS": "30"}) as parts:
            for count in counts:
                turns = open_session(parts, storage, f"user{count}", f"poll{count}", count, s3, bucket)
                turns.send(Reply([Text("warm up", chunks=2)]))
                slow = Reply([Text("streaming slowly " * 40, chunks=40)], delay=0.05)
                fake = parts[2]
                started = threading.Event()

                def respond(_: dict[str, Any], slow: Any = slow, started: threading.Event = started) -> Any:
                    started.set()
                    storage.take_traffic()
                    return slow

                parts[1].sent.clear()
                fake.script(respond)
                from tests.support.lambda_ws import ws_event

                parts[0].lambda_.invoke("ws_message", ws_event("$default", turns.connection, json.dumps(
                    {"action": "message", "prompt": "go", "sessionId": turns.session})))
                parts[1].wait_for(turns.connection, "result", timeout=60)
                parts[3].join(60)
                state_reads = [t for t in storage.take_traffic()
                               if t.path.endswith("/state.json") and t.method in ("GET", "HEAD")]
                # Every read of the state while the model streamed: the watcher's polls (a HEAD, or a
                # GET before this rework), and any read the turn's own writes needed.
                polls[count] = (len(state_reads), sum(t.received for t in state_reads) / max(len(state_reads), 1))
                parts[0].http.delete(f"/sandbox/poll{count}")
    return figures(counts, starts, ops, polls)


def figures(counts: tuple[int, int], starts: dict[int, list[tuple[int, float]]], ops: dict[int, list[Totals]],
            polls: dict[int, tuple[int, float]]) -> list[Figure]:
    small, large = counts
    rts = {c: statistics.median(r for r, _ in starts[c]) for c in counts}
    ms = {c: statistics.median(t for _, t in starts[c]) * 1000 for c in counts}
    a = {c: max(t.class_a for t in ops[c]) for c in counts}
    b = {c: max(t.class_b for t in ops[c]) for c in counts}
    after = (max(a.values()), max(b.values()))
    return [
        Figure("turn", "turn start: sequential storage round trips (message frame → model request)",
               {f"{c} skill{'s' if c > 1 else ''}": f"{rts[c]:g}" for c in counts}, "≤ 3", all(v <= 3 for v in rts.values())),
        Figure("turn", f"turn start: time at {DELAY * 1000:.0f} ms storage latency (median)",
               {f"{c} skill{'s' if c > 1 else ''}": f"{ms[c]:.0f} ms" for c in counts}, "≤ 100 ms",
               all(v <= 100 for v in ms.values())),
        Figure("turn", "storage operations per plain message (R2 Class A / B, most seen)",
               {f"{c} skill{'s' if c > 1 else ''}": f"{a[c]} A / {b[c]} B" for c in counts}, "≤ 4 A and ≤ 4 B",
               after[0] <= 4 and after[1] <= 4),
        Figure("turn", "operations a month, 1,000 users × 50 plain messages a day",
               {"before": f"${monthly(*BEFORE):.2f} ({BEFORE[0]} A + {BEFORE[1]} B)",
                "after": f"${monthly(*after):.2f} ({after[0]} A + {after[1]} B)"}, "lower", monthly(*after) < monthly(*BEFORE)),
        Figure("turn", "bytes read per state read of a running turn (polls at TURN_POLL_SECONDS=0.5)",
               {f"{c} skill{'s' if c > 1 else ''}": f"{kb(polls[c][1])} over {polls[c][0]} reads" for c in counts}, "≤ 2 KB",
               all(v[1] <= 2000 for v in polls.values()) and polls[small][0] > 0 and polls[large][0] > 0),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 skills instead of 200, fewer runs")
    args = parser.parse_args(argv)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    print(table(measure(quick=args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
