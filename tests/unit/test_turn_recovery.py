"""The pieces of turn recovery: answering cut-off tool calls, the seq ceiling, real seqs for errors."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from chalicelib.realtime import stream as stream_module
from chalicelib.realtime.protocol import error_frame
from chalicelib.realtime.recovery import CUT_OFF_RESULT, answer_cut_off_calls
from chalicelib.realtime.state import RunningTurn, Subscriber, utcnow
from chalicelib.realtime.stream import SeqCeilingReached, TurnStream
from tests.unit.test_turn_stream import GatedSender


def call(tool_id: str) -> dict[str, str]:
    return {"type": "tool_use", "id": tool_id, "name": "bash", "input": {"command": "x"}}  # type: ignore[dict-item]


def result(tool_id: str) -> dict[str, str]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}


def test_an_unanswered_call_gets_an_error_result_right_after_it() -> None:
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": [{"type": "text", "text": "on it"}, call("a")]}]
    repaired, added = answer_cut_off_calls(messages)
    assert added == [{"type": "tool_result", "tool_use_id": "a", "content": CUT_OFF_RESULT, "is_error": True}]
    assert repaired == [*messages, {"role": "user", "content": added}]
    assert answer_cut_off_calls(repaired) == (repaired, [])  # idempotent


def test_parallel_calls_half_answered_and_a_prompt_after_them() -> None:
    messages = [
        {"role": "assistant", "content": [call("a"), call("b")]},
        {"role": "user", "content": [result("a")]},
    ]
    repaired, added = answer_cut_off_calls(messages)
    assert [b["tool_use_id"] for b in added] == ["b"]
    assert [b["tool_use_id"] for b in repaired[1]["content"]] == ["a", "b"]
    # A prompt saved after the cut-off calls: the results go first, as the API requires.
    messages = [{"role": "assistant", "content": [call("c")]}, {"role": "user", "content": "next question"}]
    repaired, _ = answer_cut_off_calls(messages)
    assert [b["type"] for b in repaired[1]["content"]] == ["tool_result", "text"]
    assert repaired[1]["content"][1]["text"] == "next question"


def test_a_history_without_calls_is_left_alone() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]
    assert answer_cut_off_calls(messages) == (messages, [])
    assert answer_cut_off_calls([]) == ([], [])


def test_a_lease_decides_staleness_and_a_missed_renewal_is_noticed() -> None:
    now = utcnow()
    turn = RunningTurn(turn_id="t", runner_id="r", prompt_id="p", started_at=now, heartbeat_at=now,
                       lease_until=now + timedelta(seconds=10))
    assert not turn.is_stale(now) and turn.is_stale(now + timedelta(seconds=11))
    assert not turn.renewal_overdue(3.3, now + timedelta(seconds=6)) and turn.renewal_overdue(3.3, now + timedelta(seconds=7))


def test_an_error_frame_emitted_in_a_turn_gets_a_real_seq() -> None:
    stream = TurnStream(GatedSender(), 41, None)
    assert stream.emit(error_frame("the turn failed", "turn_failed"))["seq"] == 42
    stream.close()


def test_numbers_past_the_ceiling_wait_for_it_to_be_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "CEILING_WAIT_SECONDS", 5.0)
    stream = TurnStream(GatedSender(), 10, None, ceiling=12)
    assert [stream.emit({"event": "x"})["seq"] for _ in range(2)] == [11, 12]
    emitted: list[int] = []
    blocked = threading.Thread(target=lambda: emitted.append(stream.emit({"event": "x"})["seq"]))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive() and emitted == []  # seq 13 is not reserved yet
    stream.raise_ceiling(20)
    blocked.join(5)
    assert emitted == [13]
    stream.close()


def test_a_ceiling_never_raised_ends_the_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "CEILING_WAIT_SECONDS", 0.2)
    stream = TurnStream(GatedSender(), 5, None, ceiling=5)
    with pytest.raises(SeqCeilingReached):
        stream.emit({"event": "x"})
    stream.close()


def test_a_resume_during_a_repair_gets_each_event_once() -> None:
    sender = GatedSender()
    logged = [{"event": "tool_use", "seq": 57}]
    stream = TurnStream(sender, 10_003, None, earlier_events=lambda after: [e for e in logged if e["seq"] > after])
    logged += [stream.emit({"event": "tool_result"}), stream.emit({"event": "result"})]  # flushed to the same log
    stream.retarget(Subscriber(connection_id="c", domain_name="d", stage="api", replay_after=4))
    stream.close()
    assert [p["seq"] for _, p in sender.sent] == [57, 10_004, 10_005]


def test_a_runner_whose_turn_was_taken_over_does_not_overwrite_the_working_context(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A runner that stalled past its lease (its turn repaired and the queue moved on by another)
    # must not put back the working context it computed: the context lives in the conversation's
    # metadata and goes with its fenced save, so the newer turn's compaction wins and the stale
    # runner is told it lost its lease (it stops).
    import pytest

    from chalicelib.agent.memory import AgentMemory, WorkingContext
    from chalicelib.realtime.agent_memory import WORKING_CONTEXT, TurnMemory
    from chalicelib.realtime.transcript import Transcript
    from chalicelib.services.conversations import ConversationsService, Fence, FencedOut
    from chalicelib.storage.local import LocalDirectoryStore

    conversations = ConversationsService(LocalDirectoryStore(tmp_path))
    stale_turn = Transcript(conversations, "u", "s", Fence("s", 1))
    stale_turn.load()
    newer_turn = Transcript(conversations, "u", "s", Fence("s", 2))
    newer_turn.load()
    newer = TurnMemory("s", newer_turn.metadata, None)
    newer.keep(AgentMemory(context=WorkingContext(conversation_id="s", summary="newer", kept_from=6)))
    newer_turn.save([{"role": "user", "content": "hi"}])
    stale = TurnMemory("s", stale_turn.metadata, None)
    stale.keep(AgentMemory(context=WorkingContext(conversation_id="s", summary="stale", kept_from=2)))
    with pytest.raises(FencedOut):
        stale_turn.save([{"role": "user", "content": "hi"}], retry=False)
    stored = conversations.load("u", "s")
    assert stored is not None and stored[0]["metadata"][WORKING_CONTEXT]["summary"] == "newer"
    # The next turn reads it back from the conversation.
    again = Transcript(conversations, "u", "s", Fence("s", 3))
    again.load()
    context = TurnMemory("s", again.metadata, None).memory.context
    assert context is not None and context.summary == "newer" and context.kept_from == 6


def test_a_state_written_before_the_memory_moved_out_is_read_and_migrated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Old layout: state.json held `agentMemory` (skill index + working context). It still parses,
    # its context seeds the conversation's metadata, and the turn's end drops it from the state.
    import json

    from chalicelib.realtime.agent_memory import WORKING_CONTEXT, TurnMemory
    from chalicelib.realtime.lease import TurnRequest, claim_next, finish
    from chalicelib.realtime.state import QueuedPrompt, StateStore
    from chalicelib.storage import layout
    from chalicelib.storage.local import LocalDirectoryStore

    store = LocalDirectoryStore(tmp_path)
    old = {"sessionId": "s", "userId": "u", "conversationId": "s", "queue": [QueuedPrompt(prompt="hi").model_dump(mode="json", by_alias=True)],
           "agentMemory": {"skillIndex": {"entries": [], "fingerprint": "f", "builtAt": "2026-01-01T00:00:00Z"},
                           "context": {"conversationId": "s", "summary": "old summary", "keptFrom": 4}}}
    store.put(layout.session_key("s", "state.json"), json.dumps(old).encode())
    states = StateStore(store)
    request, _ = states.update("s", lambda s: claim_next(s, "r", utcnow(), timedelta(seconds=30)))
    assert isinstance(request, TurnRequest) and request.legacy_context is not None
    metadata: dict[str, object] = {}
    memory = TurnMemory("s", metadata, None, request.legacy_context).memory
    assert memory.context is not None and memory.context.summary == "old summary"
    assert metadata[WORKING_CONTEXT]["summary"] == "old summary"  # type: ignore[index]
    states.update("s", lambda s: finish(s, request.lease, seq=request.last_seq + 1, tail=None, logged=False))
    raw = json.loads(store.get(layout.session_key("s", "state.json")).body)
    assert "agentMemory" not in raw and raw["turn"] is None
