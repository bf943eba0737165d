"""Issue 21, row 5: every connection on a session gets every event.

Two tabs on one session, through the Lambda handlers and a fake management API: each (once it
has sent `start`, `message` or `resume`) sees the other's answers as well as its own; a third tab that resumes mid-turn gets its own missed
events from its own afterSeq without taking the stream from the others; a tab that is gone
(GoneException) is dropped alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_anthropic import Reply, Text
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def tabs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ...]]:
    monkeypatch.setenv("TURN_POLL_SECONDS", "0.1")
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        token = setup_session(client, "tabs")
        for tab in ("t1", "t2"):
            answer = client.lambda_.invoke("ws_connect", ws_event("$connect", tab, query={"sessionId": "tabs", "token": token}))
            assert answer.payload["statusCode"] == 200
            send(client, tab, {"action": "start"})  # what the console sends first (a reconnect: resume)
        yield client, management, fake, dispatcher, token


def send(client: Any, tab: str, frame: dict[str, Any]) -> None:
    client.lambda_.invoke("ws_message", ws_event("$default", tab, json.dumps(frame)))


def turn_events(management: Any, tab: str) -> list[dict[str, Any]]:
    return [f for f in management.sent.get(tab, []) if f["seq"]]


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["content"] for f in frames if f["event"] == "stream")


def test_both_tabs_get_every_answer(tabs) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, _ = tabs
    for n, tab in enumerate(("t1", "t2", "t1", "t2", "t1", "t2")):
        fake.script(Reply([Text(f"answer {n} to {tab}")]))
        send(client, tab, {"action": "message", "prompt": f"question {n}"})
        management.wait_for(tab, "result")
        dispatcher.join(30)
    one, two = turn_events(management, "t1"), turn_events(management, "t2")
    assert [f["event"] for f in one].count("result") == 6 and [f["event"] for f in two].count("result") == 6
    for n, tab in enumerate(("t1", "t2", "t1", "t2", "t1", "t2")):
        assert f"answer {n} to {tab}" in text_of(one) and f"answer {n} to {tab}" in text_of(two)
    assert [f["seq"] for f in one] == [f["seq"] for f in two] == sorted({f["seq"] for f in one})


def test_a_resuming_tab_replays_its_own_events_and_steals_nothing(tabs) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, token = tabs
    words = [f"w{i:02d} " for i in range(40)]
    fake.script(Reply([Text("".join(words), chunks=40)], delay=0.05))
    send(client, "t1", {"action": "message", "prompt": "stream slowly"})
    seen = management.wait_for("t2", "stream", timeout=30)
    after = max(f["seq"] for f in seen if f["seq"])
    # A third tab (t2 reloaded, say) resumes from what it saw; t1 and t2 stay subscribed.
    client.lambda_.invoke("ws_connect", ws_event("$connect", "t3", query={"sessionId": "tabs", "token": token}))
    send(client, "t3", {"action": "resume", "afterSeq": after})
    for tab in ("t1", "t2", "t3"):
        management.wait_for(tab, "result", timeout=60)
    dispatcher.join(30)
    one, two, three = (turn_events(management, t) for t in ("t1", "t2", "t3"))
    assert text_of(one) == text_of(two) == "".join(words)  # nobody lost the stream to t3
    assert [f["seq"] for f in three] == sorted(set(f["seq"] for f in three)) and min(f["seq"] for f in three) > after
    assert text_of(seen) + text_of(three) == "".join(words)  # t3: its own afterSeq on, each event once


def test_a_gone_tab_is_dropped_alone(tabs) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, _ = tabs
    management.gone.add("t2")  # closed without a $disconnect
    fake.script(Reply([Text("still here", chunks=5)], delay=0.02))
    send(client, "t2", {"action": "message", "prompt": "hello"})
    assert text_of(management.wait_for("t1", "result", timeout=30)) == "still here"
    dispatcher.join(30)
