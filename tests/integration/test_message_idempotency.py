"""Issue 21, rows 2 and 3: a resent message runs once, and a queued message always runs.

The app's handlers over S3 (moto server) through the fault-injecting proxy: a client that lost
its `queued` answer resends the frame with the same `messageId` and gets the first answer, and
the message runs once; when the enqueue's own write fails in a way that may have landed (two
503s, then a lost response), the handler reads the state back and answers for certain: `queued`
(and the turn runs) or `message_not_queued` (nothing was queued; a resend runs it once).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.fault_proxy import FaultRule
from tests.support.lambda_ws import setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def send(client: Any, connection: str, frame: dict[str, Any]) -> None:
    client.lambda_.invoke("ws_message", ws_event("$default", connection, json.dumps(frame)))


def direct_replies(management: Any, connection: str) -> list[dict[str, Any]]:
    return [f for f in management.sent.get(connection, []) if f["seq"] == 0]


def prompts(api: Any, session: str) -> list[str]:
    messages = json.loads(api.raw(f"users/alice/conversations/{session}.json"))["messages"]
    return [m["content"] for m in messages if m["role"] == "user" and isinstance(m["content"], str)]


def test_a_resent_message_gets_the_first_answer_and_runs_once(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "idem1")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "idem1", "token": token}))
    fake.script(Reply([ToolUse("bash", {"command": "echo run >> /workspace/runs; wc -l < /workspace/runs"})]),
                Reply([Text("Done once.")]))
    message = {"action": "message", "prompt": "run it", "messageId": "msg-0001"}
    send(client, "c1", message)
    # The client did not hear the answer (its connection dropped): it reconnects, resumes and resends.
    client.lambda_.invoke("ws_disconnect", ws_event("$disconnect", "c1"))
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c2", query={"sessionId": "idem1", "token": token}))
    send(client, "c2", {"action": "resume", "afterSeq": 0})
    send(client, "c2", message)
    frames = management.wait_for("c2", "result", timeout=60)
    dispatcher.join(30)
    send(client, "c2", message)  # and once more after the turn ended
    dispatcher.join(30)
    acks = [f for f in direct_replies(management, "c2") if f["event"] == "status" and f["status"] == "queued"]
    first, again, late = direct_replies(management, "c1")[0], acks[0], acks[1]
    assert first == {"event": "status", "seq": 0, "status": "queued", "messageId": "msg-0001", "position": 0}
    assert again == first and late == first
    assert len(fake.requests) == 2  # one turn: the tool call and the reply
    assert next(f for f in frames if f["event"] == "tool_result")["content"].strip() == "1"  # the tool ran once
    assert prompts(api, "idem1") == ["run it"]
    state = json.loads(api.raw("sessions/idem1/state.json"))
    assert state["queue"] == [] and state["turn"] is None


def test_an_enqueue_whose_answer_was_lost_is_found_and_run(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "idem2")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "idem2", "token": token}))
    fake.script(Reply([Text("Ran.")]))
    # botocore's three attempts at the enqueue's write: two 503s, then one applied whose answer is lost.
    proxy.add(FaultRule("PUT", r"/state\.json", action="status", status=503, times=2))
    proxy.add(FaultRule("PUT", r"/state\.json", action="drop_after", times=1))
    send(client, "c1", {"action": "message", "prompt": "queued for sure"})
    frames = management.wait_for("c1", "result", timeout=60)
    dispatcher.join(30)
    assert proxy.fired("status") == 2 and proxy.fired("drop_after") == 1
    [answer] = direct_replies(management, "c1")
    assert answer["status"] == "queued" and answer["position"] == 0, answer  # not "internal_error ... Retry"
    assert frames[-1]["event"] == "result" and frames[-1]["stopReason"] == "end_turn"
    assert len(fake.requests) == 1 and prompts(api, "idem2") == ["queued for sure"]


def test_an_enqueue_that_did_not_land_says_so_and_a_resend_runs_once(faulty) -> None:  # type: ignore[no-untyped-def]
    client, management, fake, dispatcher, proxy, api = faulty
    token = setup_session(client, "idem3")
    client.lambda_.invoke("ws_connect", ws_event("$connect", "c1", query={"sessionId": "idem3", "token": token}))
    fake.script(Reply([Text("Ran.")]))
    proxy.add(FaultRule("PUT", r"/state\.json", action="drop_before", times=3))  # every attempt, none applied
    message = {"action": "message", "prompt": "try me", "messageId": "msg-0003"}
    send(client, "c1", message)
    [refused] = direct_replies(management, "c1")
    assert refused["event"] == "error" and refused["code"] == "message_not_queued", refused
    assert refused["messageId"] == "msg-0003" and "same messageId" in refused["message"]
    state = json.loads(api.raw("sessions/idem3/state.json"))
    assert state["queue"] == [] and fake.requests == []
    send(client, "c1", message)
    frames = management.wait_for("c1", "result", timeout=60)
    dispatcher.join(30)
    assert direct_replies(management, "c1")[1]["status"] == "queued"
    assert frames[-1]["stopReason"] == "end_turn" and len(fake.requests) == 1 and prompts(api, "idem3") == ["try me"]
