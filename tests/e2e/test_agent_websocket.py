"""The agent end to end: REST setup, a real websocket through the local gateway, the real
anthropic SDK against the fake Messages API, tools in a real bwrap sandbox."""

from __future__ import annotations

import json
import shutil

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.fakes.fake_anthropic import Endless, HttpError, Reply, Text, ToolUse
from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

SKILL = "# Debugging Skill\n\nAlways read the logs in /var/log first, then bisect."


def test_skill_read_by_a_tool_streams_and_is_saved(world) -> None:  # type: ignore[no-untyped-def]
    assert world.http.post("/users/alice/skills", json={"name": "debugging.md", "content": SKILL}).status_code == 200
    setup = world.setup("sess-1", "alice")
    world.fake.script(
        Reply([Text("Let me read your debugging skill."),
               ToolUse("str_replace_based_edit_tool", {"command": "view", "path": "/workspace/.claude/skills/debugging.md"})],
              input_tokens=1000, output_tokens=50),
        # Paced as a model streams, so each delta goes out alone (merging only joins deltas that pile up).
        Reply([Text("Your skill says: read the logs first, then bisect.", chunks=8)], input_tokens=1200, output_tokens=30, delay=0.02),
    )
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start", "maxTurns": 5}))
        ready = receive_until(ws, "status")
        assert ready[-1]["status"] == "ready" and ready[-1]["seq"] == 0
        ws.send(json.dumps({"action": "message", "prompt": "How should I debug?"}))
        frames = receive_until(ws, "result")
    events = [f["event"] for f in frames]
    assert events.count("stream") >= 9
    tool_use = next(f for f in frames if f["event"] == "tool_use")
    assert tool_use["name"] == "str_replace_based_edit_tool"
    tool_result = next(f for f in frames if f["event"] == "tool_result")
    assert "Always read the logs in /var/log first" in tool_result["content"] and not tool_result["is_error"]
    streamed = "".join(f["content"] for f in frames if f["event"] == "stream")
    assert streamed == "Let me read your debugging skill.Your skill says: read the logs first, then bisect."
    result = frames[-1]
    assert result["turns"] == 2 and result["stopReason"] == "end_turn"
    assert result["usage"] == {"inputTokens": 2200, "outputTokens": 80, "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0}
    assert result["costUsd"] == pytest.approx((2200 * 2 + 80 * 10) / 1e6)  # claude-sonnet-5-5: $2 / $10
    seqs = [f["seq"] for f in frames if f["seq"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The model saw the skill index in its system prompt and our tools by type only.
    first = world.fake.requests[0]
    system = "".join(block["text"] for block in first["system"])
    assert "/workspace/.claude/skills/debugging.md" in system and "Debugging Skill" in system
    assert first["tools"] == [{"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]
    # The whole exchange is saved where the REST API reads it.
    saved = world.http.get("/users/alice/conversations/sess-1").json()["conversation"]
    roles = [m["role"] for m in saved["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert saved["messages"][2]["content"][0]["type"] == "tool_result"
    assert saved["messages"][3]["content"][0]["text"].startswith("Your skill says")


def test_connect_auth_matrix(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-auth", "alice")
    base = world.url.replace("http", "ws", 1) + "/ws"
    for url, status in [
        (f"{base}?sessionId=sess-auth", 401),
        (f"{base}?sessionId=sess-auth&token=wrong", 403),
        (f"{base}?sessionId=unknown-session&token={setup['token']}", 404),
        (f"{base}?sessionId=..&token=x", 404),
        (f"{base}", 404),
    ]:
        with pytest.raises(InvalidStatus) as caught:
            connect(url).close()
        assert caught.value.response.status_code == status, url
    with connect(world.ws_url(setup)):
        pass


def test_bad_frames_get_errors_and_the_connection_stays_usable(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-bad", "alice")
    with connect(world.ws_url(setup)) as ws:
        for frame, code in [("not json", "invalid_json"), ("[]", "invalid_frame"), ('{"action": "fly"}', "unknown_action"),
                            ('{"action": "message"}', "invalid_frame"), ('{"action": "start", "maxTurns": 0}', "invalid_frame")]:
            ws.send(frame)
            error = receive_until(ws, "error")[-1]
            assert error["code"] == code and error["seq"] == 0
        ws.send(json.dumps({"action": "get_history"}))
        assert receive_until(ws, "history")[-1]["messages"] == []


def test_missing_anthropic_key_is_said_exactly(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    setup = world.setup("sess-nokey", "alice")
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start"}))
        error = receive_until(ws, "error")[-1]
    assert error["code"] == "anthropic_api_key_missing" and "ANTHROPIC_API_KEY is not set" in error["message"]


def test_model_errors_end_with_a_clear_error_and_history_intact(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-err", "alice")
    world.fake.script(
        HttpError(529, "overloaded_error", "Overloaded", retry_after_ms=1), HttpError(529, "overloaded_error", "Overloaded", retry_after_ms=1),
        HttpError(401, "authentication_error", "invalid x-api-key"),
        HttpError(429, "rate_limit_error", "slow", retry_after_ms=1), HttpError(429, "rate_limit_error", "slow", retry_after_ms=1),
        Reply([Text("one two three")], error_after=1), Reply([Text("one two three")], error_after=1),
        Reply([Text("one two three")], error_after=1), Reply([Text("one two three")], error_after=1),
        Reply([Text("Recovered fine.")]),
    )
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start"}))
        receive_until(ws, "status")
        codes = []
        for prompt in ("a", "b", "c", "d"):
            ws.send(json.dumps({"action": "message", "prompt": prompt}))
            frames = receive_until(ws, "result")
            errors = [f for f in frames if f["event"] == "error"]
            codes.append(errors[0]["code"] if errors else None)
            assert frames[-1]["stopReason"] == ("error" if errors else "end_turn")
        ws.send(json.dumps({"action": "message", "prompt": "e"}))
        last = receive_until(ws, "result")
    assert codes == ["model_overloaded", "model_auth_failed", "rate_limited", "model_overloaded"]
    assert any(f["event"] == "status" and f.get("status") == "retrying" for f in last) is False
    saved = world.http.get("/users/alice/conversations/sess-err").json()["conversation"]["messages"]
    assert [m["content"] for m in saved if m["role"] == "user"] == ["a", "b", "c", "d", "e"]
    assert saved[-1]["content"][0]["text"] == "Recovered fine."


def test_mid_stream_overload_is_retried_in_the_loop(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-retry", "alice")
    world.fake.script(Reply([Text("partial words here", chunks=3)], error_after=2), Reply([Text("Complete answer.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "hi"}))
        frames = receive_until(ws, "result")
    retry = next(f for f in frames if f["event"] == "status" and f.get("status") == "retrying")
    assert retry["discardStreamed"] > 0
    assert frames[-1]["stopReason"] == "end_turn"
    assert [f for f in frames if f["event"] == "message" and f["role"] == "assistant"][-1]["content"][0]["text"] == "Complete answer."


def test_max_turns_is_honoured(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-max", "alice")
    world.fake.script(*[Reply([ToolUse("bash", {"command": "echo hi"})]) for _ in range(3)])
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "start", "maxTurns": 2}))
        receive_until(ws, "status")
        ws.send(json.dumps({"action": "message", "prompt": "loop"}))
        frames = receive_until(ws, "result")
    assert any(f.get("status") == "max_turns_reached" for f in frames)
    assert frames[-1]["turns"] == 2 and frames[-1]["stopReason"] == "max_turns"
    results = [f for f in frames if f["event"] == "tool_result"]
    assert results and results[0]["content"].strip() == "hi"


def test_interrupt_stops_a_long_answer_and_keeps_what_was_said(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-int", "alice")
    world.fake.script(Endless(delta="word ", delay=0.01, max_deltas=20000))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "talk forever"}))
        frames = receive_until(ws, "stream")
        frames += [__import__("json").loads(ws.recv(timeout=10)) for _ in range(20)]
        ws.send(json.dumps({"action": "interrupt"}))
        frames += receive_until(ws, "result", timeout=20)
    result = frames[-1]
    assert result["interrupted"] and result["stopReason"] == "interrupted"
    streamed = sum(1 for f in frames if f["event"] == "stream")
    assert streamed < 20000
    saved = world.http.get("/users/alice/conversations/sess-int").json()["conversation"]["messages"]
    assert saved[-1]["role"] == "assistant" and saved[-1]["content"][0]["text"].startswith("word word")


def test_messages_during_a_turn_are_queued(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-q", "alice")
    world.fake.script(Reply([Text("first answer", chunks=4)], delay=0.1), Reply([Text("second answer")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "one"}))
        receive_until(ws, "stream")
        ws.send(json.dumps({"action": "message", "prompt": "two"}))
        frames = receive_until(ws, "result")
        frames += receive_until(ws, "result")
    queued = [f for f in frames if f["event"] == "status" and f.get("status") == "queued"]
    assert queued and queued[-1]["position"] >= 1
    results = [f for f in frames if f["event"] == "result"]
    assert len(results) == 2
    # The newest message carries the rolling cache breakpoint.
    assert world.fake.requests[1]["messages"][-1]["content"] == [{"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}}]
    assert world.fake.requests[1]["messages"][1]["content"][0]["text"] == "first answer"


def test_clear_resets_history(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-clear", "alice")
    world.fake.script(Reply([Text("hello")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "hi"}))
        receive_until(ws, "result")
        ws.send(json.dumps({"action": "clear"}))
        assert receive_until(ws, "cleared")[-1]["conversationId"] == "sess-clear"
        ws.send(json.dumps({"action": "get_history"}))
        assert receive_until(ws, "history")[-1]["messages"] == []


def test_resume_after_a_disconnect_replays_what_was_missed(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-resume", "alice")
    world.fake.script(Reply([Text("abcdefghijklmnopqrstuvwxyz" * 4, chunks=40)], delay=0.05))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "spell"}))
        seen = receive_until(ws, "stream")
        seen += [json.loads(ws.recv(timeout=10)) for _ in range(3)]
    # The client went away mid-turn; the turn goes on.
    last_seq = max(f["seq"] for f in seen)
    with connect(world.ws_url(setup)) as ws2:
        ws2.send(json.dumps({"action": "resume", "afterSeq": last_seq}))
        rest = receive_until(ws2, "result", timeout=30)
    seqs = [f["seq"] for f in rest if f["seq"]]
    # Each event once, in order; merged deltas carry the last merged seq, so numbers may skip.
    assert seqs[0] > last_seq and seqs == sorted(set(seqs))
    text = "".join(f["content"] for f in seen + rest if f["event"] == "stream")
    assert text == "abcdefghijklmnopqrstuvwxyz" * 4
    saved = world.http.get("/users/alice/conversations/sess-resume").json()["conversation"]["messages"]
    assert saved[-1]["content"][0]["text"] == "abcdefghijklmnopqrstuvwxyz" * 4


def test_resume_after_the_turn_ended_replays_from_storage(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-late", "alice")
    world.fake.script(Reply([Text("finished while away", chunks=3)]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "go"}))
        first = receive_until(ws, "stream")
    import time

    for _ in range(100):  # bounded wait for the turn to finish without a client
        got = world.http.get("/users/alice/conversations/sess-late")
        # 404 until the turn's one save (prompt and reply together) lands.
        if got.status_code == 200 and got.json()["conversation"]["messages"][-1]["role"] == "assistant":
            break
        time.sleep(0.1)
    time.sleep(0.5)
    with connect(world.ws_url(setup)) as ws2:
        ws2.send(json.dumps({"action": "resume", "afterSeq": first[-1]["seq"]}))
        rest = receive_until(ws2, "status", timeout=10)
    assert rest[-1]["status"] == "resumed"
    assert any(f["event"] == "result" for f in rest)
    assert "".join(f["content"] for f in first + rest if f["event"] == "stream") == "finished while away"
