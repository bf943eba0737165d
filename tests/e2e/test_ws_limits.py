"""No user can slow another down over the websocket (issue 23, item 8), on the local gateway:

- a storm of `clear` frames during a running turn holds no frame worker: each is answered at once
  (`status: clearing`), the turn's runner clears when the turn ends (`cleared`), and another
  user's `get_history` is answered meanwhile;
- a connection flooding frames is refused past WS_FRAMES_PER_SECOND (`frame_rate_exceeded`) and
  closed, and another user's frame is answered meanwhile;
- one connection past WS_CONNECTIONS_PER_SESSION is refused with 429 `too_many_connections`.

The bounds on another user's answer are generous (seconds, not milliseconds): before these
fixes the storm delayed it by about 24 s.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack, suppress

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.fakes.fake_anthropic import Endless
from tests.support.gateway import receive_until

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

# Before: each `clear` held one of the gateway's 8 frame workers for up to 3 s, so 64 of them
# queued another user's frame behind 24 s of waiting.
STORM = 64
ANSWERED_WITHIN = 5.0  # seconds: generous on a loaded machine, far below the 24 s of before


def _history_answered(ws: ClientConnection) -> dict:  # type: ignore[type-arg]
    """Send get_history and wait (bounded) for its answer."""
    ws.send(json.dumps({"action": "get_history"}))
    return receive_until(ws, "history", timeout=ANSWERED_WITHIN)[-1]


def _clear_answers(frames: list[dict]) -> int:  # type: ignore[type-arg]
    return sum(1 for f in frames if f.get("status") == "clearing" or f["event"] == "cleared")


def test_a_clear_storm_during_a_turn_delays_no_one(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WS_FRAMES_PER_SECOND", "1000")  # the storm itself, not the rate cap, is under test
    world.fake.script(Endless(delta="word ", delay=0.05, max_deltas=2000))
    alice = world.setup("sess-storm-a", "storm-alice")
    bob = world.setup("sess-storm-b", "storm-bob")
    with connect(world.ws_url(alice)) as a, connect(world.ws_url(bob)) as b:
        a.send(json.dumps({"action": "message", "prompt": "talk for a while"}))
        receive_until(a, "stream", timeout=30)  # the turn runs
        for _ in range(STORM):
            a.send(json.dumps({"action": "clear"}))
        time.sleep(0.5)  # every clear has reached the server before Bob asks
        assert _history_answered(b)["conversationId"] == "sess-storm-b"
        # Every clear is answered: `clearing` while the turn runs (the turn's runner then clears
        # and says `cleared`), or `cleared` at once for one handled after the turn ended.
        a.send(json.dumps({"action": "interrupt"}))
        frames: list[dict] = []  # type: ignore[type-arg]
        deadline = time.monotonic() + 30
        while _clear_answers(frames) < STORM + 1 and time.monotonic() < deadline:
            try:
                frames.append(json.loads(a.recv(timeout=max(0.1, deadline - time.monotonic()))))
            except TimeoutError:
                import collections
                print(collections.Counter((f["event"], f.get("status"), f.get("code")) for f in frames))
                raise
        assert _clear_answers(frames) == STORM + 1  # each clear, and the runner's `cleared`
        assert any(f.get("status") == "clearing" for f in frames)
        assert any(f["event"] == "result" and f["interrupted"] for f in frames)
        assert not [f for f in frames if f["event"] == "error"]
        assert _history_answered(a)["messages"] == []


def test_a_frame_flood_is_refused_and_closed_and_delays_no_one(world) -> None:  # type: ignore[no-untyped-def]
    flooder = world.setup("sess-flood-a", "flood-alice")
    bob = world.setup("sess-flood-b", "flood-bob")
    with connect(world.ws_url(flooder)) as a, connect(world.ws_url(bob)) as b:
        sent = 0
        with suppress(ConnectionClosed):
            for _ in range(3000):
                a.send(json.dumps({"action": "get_history"}))
                sent += 1
        assert _history_answered(b)["conversationId"] == "sess-flood-b"
        received: list[dict] = []  # type: ignore[type-arg]
        with suppress(ConnectionClosed, TimeoutError):
            for _ in range(5000):
                received.append(json.loads(a.recv(timeout=10)))
        refused = [f for f in received if f["event"] == "error"]
        assert refused and {f["code"] for f in refused} == {"frame_rate_exceeded"}
        assert "WS_FRAMES_PER_SECOND" in refused[0]["message"]
        # At most the burst (one second's worth, 20 by default) and the refill were run (the
        # answers still on their way when the connection closed are not delivered).
        assert sum(1 for f in received if f["event"] == "history") < 200
        with pytest.raises(ConnectionClosed) as closed:  # the flood closed the connection
            a.send(json.dumps({"action": "get_history"}))
            a.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008  # policy violation
        assert closed.value.rcvd.reason == "frame_rate_exceeded"


def test_one_connection_past_the_cap_is_refused(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WS_CONNECTIONS_PER_SESSION", "3")
    setup = world.setup("sess-cap", "cap-alice")
    with ExitStack() as stack:
        open_ones = [stack.enter_context(connect(world.ws_url(setup))) for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            connect(world.ws_url(setup))
        assert refused.value.response.status_code == 429
        body = json.loads(refused.value.response.body)
        assert body["code"] == "too_many_connections" and "WS_CONNECTIONS_PER_SESSION" in body["error"]
        open_ones[0].close()
        # Its $disconnect frees its place (bounded wait: it runs after the close).
        deadline = time.monotonic() + 10
        while True:
            try:
                stack.enter_context(connect(world.ws_url(setup)))
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "the closed connection's place was never freed"
                time.sleep(0.1)
