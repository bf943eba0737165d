"""Item 5 of issue 11: storage failing during a turn, injected at the wire.

The app's real S3 client talks to moto server through the fault-injecting proxy
(tests/support/fault_proxy.py): 503 SlowDown, connections dropped before a request is applied,
and responses lost after it was applied. A short outage is ridden out (nothing lost, nothing
doubled); a lasting one ends the turn with a clear `error` (with a real seq, so resume replays
it) and leaves a session the next message can use, with every tool call answered.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import pytest

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.fault_proxy import FaultRule
from tests.support.lambda_ws import setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def stored_messages(api: Any, conversation: str) -> list[dict[str, Any]]:
    return json.loads(api.raw(f"users/alice/conversations/{conversation}.json"))["messages"]


def unanswered(messages: list[dict[str, Any]]) -> list[str]:
    calls = [b["id"] for m in messages if m["role"] == "assistant" and isinstance(m["content"], list)
             for b in m["content"] if b["type"] == "tool_use"]
    answers = {b["tool_use_id"] for m in messages if m["role"] == "user" and isinstance(m["content"], list)
               for b in m["content"] if b.get("type") == "tool_result"}
    return [c for c in calls if c not in answers]


def test_a_short_outage_during_a_turn_loses_and_doubles_nothing(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "sf1")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "sf1", "token": token}))
    fake.script(Reply([ToolUse("bash", {"command": "echo run >> /workspace/runs; wc -l < /workspace/runs"})]),
                Reply([Text("All done.")]))
    # Every kind of fault on every kind of write a turn makes; botocore's own 4 attempts cannot
    # ride out the first rule (5 failures in a row), the runner's backoff must.
    proxy.add(FaultRule("PUT", r"/conversations/", action="status", status=503, times=5))  # 4 botocore attempts + 1
    proxy.add(FaultRule("PUT", r"/conversations/", action="drop_after", times=1))
    proxy.add(FaultRule("PUT", r"/events/", action="drop_before", times=3))
    proxy.add(FaultRule("PUT", r"/state\.json", action="drop_after", times=2))
    proxy.add(FaultRule("GET", r"/state\.json", action="status", status=500, times=2))
    started = time.monotonic()
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go"})))
    frames = management.wait_for("c1", "result", timeout=90)
    dispatcher.join(30)
    print(f"\nshort outage: turn completed in {time.monotonic() - started:.1f} s; faults fired: "
          f"status={proxy.fired('status')} drop_before={proxy.fired('drop_before')} drop_after={proxy.fired('drop_after')}")
    assert proxy.fired("status") == 7 and proxy.fired("drop_before") == 3 and proxy.fired("drop_after") == 3
    assert frames[-1]["stopReason"] == "end_turn" and not [f for f in frames if f["event"] == "error"]
    assert next(f for f in frames if f["event"] == "tool_result")["content"].strip() == "1"  # ran once
    assert len(fake.requests) == 2  # the message was queued and run once
    messages = stored_messages(api, "sf1")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"] and not unanswered(messages)
    assert messages[-1]["content"] == [{"type": "text", "text": "All done."}]
    state = json.loads(api.raw("sessions/sf1/state.json"))
    assert state["turn"] is None and state["queue"] == []


def test_a_lasting_outage_ends_the_turn_with_an_error_and_the_next_message_works(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "sf2")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "sf2", "token": token}))
    fake.script(Reply([ToolUse("bash", {"command": "echo the-lost-output"})]), Reply([Text("Carrying on.")]))
    # The prompt and the tool call are saved (together: one write); from the tool result on, the
    # conversation cannot be.
    proxy.add(FaultRule("PUT", r"/conversations/", action="status", status=503, skip=1, times=None))
    started = time.monotonic()
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "one"})))
    frames = management.wait_for("c1", "error", timeout=120)
    failed_after = time.monotonic() - started
    dispatcher.join(60)
    error = next(f for f in frames if f["event"] == "error")
    assert error["code"] == "storage_unavailable" and error["seq"] > 0 and "Send your message again" in error["message"]
    assert json.loads(api.raw("sessions/sf2/state.json"))["turn"] is None  # not stuck in running

    proxy.clear()  # storage is back
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c2", query={"sessionId": "sf2", "token": token}))
    client.lambda_.invoke("ws_message", ws_event("$default", "c2", json.dumps({"action": "resume", "afterSeq": error["seq"] - 1})))
    replayed = management.wait_for("c2", "status")
    assert error in replayed  # the runner's error was logged under its seq, so resume replays it
    assert [f["event"] for f in replayed if f["seq"] >= error["seq"]][:2] == ["error", "result"]  # the turn ended
    started = time.monotonic()
    client.lambda_.invoke("ws_message", ws_event("$default", "c2", json.dumps({"action": "message", "prompt": "two"})))
    # (the replay holds the failed turn's own `result`, which follows its error: wait for the next one)
    for _ in range(600):  # bounded: 60 s
        after = management.sent["c2"][len(replayed):]
        if any(f["event"] == "result" for f in after):
            break
        time.sleep(0.1)
    recovered_after = time.monotonic() - started
    dispatcher.join(30)
    print(f"\nlasting outage: error after {failed_after:.1f} s; next message answered {recovered_after:.1f} s after storage came back")
    assert after[-1]["stopReason"] == "end_turn"
    assert min(f["seq"] for f in after if f["seq"]) > error["seq"]
    messages = stored_messages(api, "sf2")
    assert not unanswered(messages)
    cut = [b for m in messages if m["role"] == "user" and isinstance(m["content"], list) for b in m["content"]
           if b.get("type") == "tool_result"]
    assert len(cut) == 1 and cut[0]["is_error"] and "cut off" in cut[0]["content"]
    assert messages[-1]["content"] == [{"type": "text", "text": "Carrying on."}]
    sent_history = fake.requests[-1]["messages"]
    assert sent_history[-1]["content"][0]["type"] == "tool_result"  # the API got a valid history


def test_a_turn_that_ended_but_could_not_record_it_is_not_reported_as_cut_off(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "sf3")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "sf3", "token": token}))
    fake.script(Reply([Text("First answer.")]), Reply([Text("Second answer.")]))
    # The message is queued and claimed (one write); recording the end of the turn fails for good.
    proxy.add(FaultRule("PUT", r"/state\.json", action="status", status=503, skip=1, times=None))
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "one"})))
    first = management.wait_for("c1", "result", timeout=60)
    dispatcher.join(120)
    assert json.loads(api.raw("sessions/sf3/state.json"))["turn"] is not None  # left "running"
    proxy.clear()
    started = time.monotonic()
    client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "two"})))
    for _ in range(600):  # bounded: 60 s for the second result
        sent = management.sent["c1"][len(first):]
        if any(f["event"] == "result" for f in sent):
            break
        time.sleep(0.1)
    dispatcher.join(30)
    print(f"\nunrecorded end: next message answered {time.monotonic() - started:.1f} s after storage came back")
    assert [f["event"] for f in sent if f["event"] in ("error", "result")] == ["result"], [f["event"] for f in sent]
    assert sent[-1]["stopReason"] == "end_turn"
    assert [m["role"] for m in stored_messages(api, "sf3")] == ["user", "assistant", "user", "assistant"]
    state = json.loads(api.raw("sessions/sf3/state.json"))
    assert state["turn"] is None and state["lastSeq"] == sent[-1]["seq"]
