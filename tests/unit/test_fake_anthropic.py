"""The fake Messages API speaks what the real SDK parses."""

from __future__ import annotations

import anthropic
import pytest

from tests.fakes.fake_anthropic import FakeAnthropic, HttpError, Reply, Text, ToolUse


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    with FakeAnthropic() as server:
        yield server


def client(fake: FakeAnthropic, retries: int = 2) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test-key", base_url=fake.url, max_retries=retries)


def stream(c: anthropic.Anthropic):  # type: ignore[no-untyped-def]
    return c.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "hi"}])


def test_text_stream_parses(fake: FakeAnthropic) -> None:
    fake.script(Reply([Text("Hello there, friend.", chunks=4)], input_tokens=12, output_tokens=7))
    with stream(client(fake)) as s:
        deltas = [e.delta.text for e in s if e.type == "content_block_delta" and e.delta.type == "text_delta"]
        final = s.get_final_message()
    assert "".join(deltas) == "Hello there, friend." and len(deltas) == 4
    assert final.content[0].text == "Hello there, friend."
    assert (final.usage.input_tokens, final.usage.output_tokens, final.stop_reason) == (12, 7, "end_turn")
    assert "test-key" in (fake.headers[0].get("x-api-key"), fake.headers[0].get("authorization", "").removeprefix("Bearer "))


def test_tool_use_with_split_input_json(fake: FakeAnthropic) -> None:
    fake.script(Reply([Text("Let me look."), ToolUse("bash", {"command": "ls -la /workspace", "n": [1, 2]}, chunks=5)]))
    with stream(client(fake)) as s:
        partial = [e for e in s if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        final = s.get_final_message()
    assert len(partial) == 5
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.name == "bash" and tool.input == {"command": "ls -la /workspace", "n": [1, 2]}
    assert final.stop_reason == "tool_use"


def test_429_with_retry_after_ms_is_retried(fake: FakeAnthropic) -> None:
    fake.script(HttpError(429, "rate_limit_error", "slow down", retry_after_ms=10), Reply([Text("ok")]))
    with stream(client(fake)) as s:
        assert s.get_final_message().content[0].text == "ok"
    assert len(fake.requests) == 2


def test_persistent_529_surfaces_after_retries(fake: FakeAnthropic) -> None:
    fake.script(*[HttpError(529, "overloaded_error", "Overloaded", retry_after_ms=5)] * 3)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with stream(client(fake, retries=2)) as s:
            s.get_final_message()
    assert caught.value.status_code == 529 and len(fake.requests) == 3


def test_mid_stream_error_is_an_api_status_error(fake: FakeAnthropic) -> None:
    fake.script(Reply([Text("one two three four", chunks=4)], error_after=2))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with stream(client(fake)) as s:
            for _ in s:
                pass
    assert "overloaded" in str(caught.value).lower()
    assert len(fake.requests) == 1  # not retried by the SDK


def test_auth_error(fake: FakeAnthropic) -> None:
    fake.script(HttpError(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(anthropic.AuthenticationError):
        with stream(client(fake)) as s:
            s.get_final_message()


def test_unscripted_request_fails_loudly(fake: FakeAnthropic) -> None:
    with pytest.raises(anthropic.APIStatusError):
        with stream(client(fake, retries=0)) as s:
            s.get_final_message()
