"""The frame-rate buckets and the session state's clear and connection fields, unit by unit."""

from __future__ import annotations

from datetime import timedelta

from chalicelib.realtime.clearing import clear_deferred, defer_clear, take_clear
from chalicelib.realtime.state import RunningTurn, SessionState, Subscriber, utcnow
from chalicelib.web.frame_rate import FLOOD_SECONDS, FrameRateLimiter, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_seconds_worth_then_the_rate() -> None:
    clock = Clock()
    limiter = FrameRateLimiter(5, clock)
    assert [limiter.check("c") for _ in range(5)] == [Verdict.ADMIT] * 5
    assert limiter.check("c") is Verdict.REFUSE_AND_TELL
    assert limiter.check("c") is Verdict.DROP  # told once a second, not once a frame
    assert limiter.check("other") is Verdict.ADMIT  # buckets are per connection
    clock.now += 0.2  # one frame's worth refilled
    assert limiter.check("c") is Verdict.ADMIT
    assert limiter.check("c") is Verdict.DROP  # told 0.2 s ago
    clock.now += 1.0  # a second later: five frames refilled, then told again
    assert [limiter.check("c") for _ in range(6)] == [Verdict.ADMIT] * 5 + [Verdict.REFUSE_AND_TELL]


def test_a_flood_is_closed_once() -> None:
    clock = Clock()
    limiter = FrameRateLimiter(2, clock)
    verdicts = [limiter.check("c") for _ in range(2 + FLOOD_SECONDS * 2 + 10)]
    assert verdicts[:2] == [Verdict.ADMIT] * 2
    assert verdicts.count(Verdict.CLOSE) == 1
    assert verdicts.index(Verdict.CLOSE) == 2 + FLOOD_SECONDS * 2 - 1
    limiter.forget("c")
    assert limiter.check("c") is Verdict.ADMIT  # a new connection with that id starts afresh


def test_a_state_written_before_these_fields_reads() -> None:
    old = '{"sessionId": "s1", "userId": "u1", "conversationId": "s1", "lastSeq": 3}'
    state = SessionState.model_validate_json(old)
    assert state.connections == [] and state.clear_after_turn is None


def _running(state: SessionState) -> SessionState:
    now = utcnow()
    state.turn = RunningTurn.model_validate({"turnId": "t1", "runnerId": "r1", "promptId": "p1", "startedAt": now,
                                             "heartbeatAt": now, "leaseUntil": now + timedelta(seconds=30)})
    return state


def test_a_clear_waits_for_the_turn_it_found_and_is_taken_once() -> None:
    state = SessionState(session_id="s1", user_id="u1", conversation_id="s1")
    assert defer_clear(state) is False  # no turn: cleared at once by the handler
    _running(state)
    state.remembered_permissions = {"bash": "allow"}  # type: ignore[dict-item]
    assert defer_clear(state) is True and state.clear_after_turn == "t1"
    assert not clear_deferred(state, "c1")  # not subscribed: it would not hear `cleared`
    state.subscribe(Subscriber(connection_id="c1", domain_name="d", stage="api"))
    assert clear_deferred(state, "c1")
    assert take_clear(state) is True and state.clear_after_turn is None and state.remembered_permissions == {}
    assert take_clear(state) is False
