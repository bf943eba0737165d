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
    # must not put back the working context it computed: the newer turn's compaction wins, and
    # the stale runner is told it lost its lease (it stops).
    from types import SimpleNamespace

    import pytest

    from chalicelib.agent.memory import AgentMemory, WorkingContext
    from chalicelib.realtime.lease import Lease, LeaseLost
    from chalicelib.realtime.runner import TurnRunner
    from chalicelib.realtime.state import SessionState, StateStore
    from chalicelib.storage.local import LocalDirectoryStore

    states = StateStore(LocalDirectoryStore(tmp_path))
    now = utcnow()
    newer = AgentMemory(context=WorkingContext(conversation_id="s", summary="newer", kept_from=6))
    turn = RunningTurn(turn_id="t2", runner_id="alive", prompt_id="p2", started_at=now, heartbeat_at=now, epoch=2)
    states.update("s", lambda s: None, create=lambda: SessionState(session_id="s", user_id="u", conversation_id="s",
                                                                    turn=turn, agent_memory=newer, lease_epoch=2))
    stale = AgentMemory(context=WorkingContext(conversation_id="s", summary="stale", kept_from=2))
    runner = SimpleNamespace(states=states)
    with pytest.raises(LeaseLost):
        TurnRunner._save_memory(runner, Lease("s", "t1", "stalled", 1), stale)  # type: ignore[arg-type]
    assert states.read("s").agent_memory == newer  # type: ignore[union-attr]
    # Same turn and runner but an older claim (the runner's own earlier epoch): refused too.
    with pytest.raises(LeaseLost):
        TurnRunner._save_memory(runner, Lease("s", "t2", "alive", 1), stale)  # type: ignore[arg-type]
    # The runner that holds the turn does save its context.
    TurnRunner._save_memory(runner, Lease("s", "t2", "alive", 2), stale)  # type: ignore[arg-type]
    assert states.read("s").agent_memory == stale  # type: ignore[union-attr]
