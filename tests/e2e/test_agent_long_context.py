"""The agent at production cost and length, end to end: REST setup, a real websocket through the
local gateway, the real anthropic SDK against the caching Messages API stand-in, tools in real
bwrap sandboxes (and a real sandbox host for the skill index)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from chalicelib.agent.memory import SUMMARY_INTRO
from tests.e2e.conftest import World
from tests.fakes.caching_anthropic import CachingAnthropic
from tests.fakes.fake_anthropic import RedactedThinking, Reply, Text, Thinking, ToolUse
from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.fixture
def caching_world(gateway_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with CachingAnthropic(limit_tokens=24_000) as fake:
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("SANDBOX_ROOT", str(tmp_path / "sandboxes"))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_MAX_RETRIES", "0")
        with httpx.Client(base_url=gateway_url, timeout=60) as http:
            yield World(gateway_url, fake, http, tmp_path / "data")


def _chat(world: World, setup: dict[str, Any], prompts: list[str]) -> list[list[dict[str, Any]]]:
    turns = []
    with connect(world.ws_url(setup)) as ws:
        for prompt in prompts:
            ws.send(json.dumps({"action": "message", "prompt": prompt}))
            turns.append(receive_until(ws, "result", timeout=60))
    return turns


def _texts(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def test_compaction_keeps_six_long_messages_answered_within_24k_tokens(caching_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXT_WINDOW_TOKENS", "24000")
    world = caching_world
    setup = world.setup("sess-long", "alice")
    # Six messages, each reading two 20,000-character files (~10k tokens): ~60k tokens of tool output.
    prompts, replies = [], []
    for n in range(1, 7):
        prompts.append(f"Question {n}: what do files {n}a and {n}b say?")
        # Thinking blocks too: on Sonnet 5.5 they are bound to their prefix, which compaction changes.
        replies += [Reply([Thinking(f"Plan {n}."), Text(f"Reading file {n}a."),
                           ToolUse("bash", {"command": f"head -c 20000 /dev/zero | tr '\\0' '{n}'"})]),
                    Reply([Text(f"Reading file {n}b."), ToolUse("bash", {"command": "head -c 20000 /dev/zero | tr '\\0' 'b'"})]),
                    Reply([Text(f"Answer {n}: both files are all {n}s and bs.")])]
    world.fake.script(*replies)
    turns = _chat(world, setup, prompts)

    for n, frames in enumerate(turns, start=1):
        result = frames[-1]
        assert result["stopReason"] == "end_turn" and not [f for f in frames if f["event"] == "error"], frames
        assert f"Answer {n}:" in "".join(f["content"] for f in frames if f["event"] == "stream" and f["type"] == "text")
    compacted = [f for frames in turns for f in frames if f["event"] == "status" and f["status"] == "compacted"]
    assert compacted and all(f["tokensAfter"] < f["tokensBefore"] for f in compacted)
    assert world.fake.summary_requests, "compaction made no summarising call"
    assert world.fake.refused_too_long == 0  # compaction came before the limit, not after it
    assert world.fake.refused_binding == 0  # no thinking block was replayed after its prefix changed
    # Every request stayed inside the window, and a later one carried the summary.
    later = world.fake.conversation_requests[-1]
    assert SUMMARY_INTRO in _texts(later["messages"][0]["content"]) and "SUMMARY-" in _texts(later["messages"][0]["content"])
    # The stored conversation keeps the whole history: six prompts and six answers.
    saved = world.http.get("/users/alice/conversations/sess-long").json()["conversation"]["messages"]
    user_prompts = [m["content"] for m in saved if m["role"] == "user" and isinstance(m["content"], str)]
    answers = [_texts(m["content"]) for m in saved if m["role"] == "assistant" and "Answer" in _texts(m["content"])]
    assert user_prompts == prompts and len(answers) == 6
    # Never a tool_result without its tool_use in any request.
    for body in world.fake.conversation_requests:
        uses = {b["id"] for m in body["messages"] if m["role"] == "assistant" for b in m["content"] if b.get("type") == "tool_use"}
        results = {b["tool_use_id"] for m in body["messages"] if isinstance(m["content"], list)
                   for b in m["content"] if b.get("type") == "tool_result"}
        assert results <= uses


def test_prompt_too_long_compacts_and_retries_once(caching_world: World) -> None:
    # No CONTEXT_WINDOW_TOKENS: the model's own 1M window, so only the endpoint's 400 says stop.
    world = caching_world
    setup = world.setup("sess-400", "alice")
    replies = []
    for n in range(1, 5):
        replies += [Reply([ToolUse("bash", {"command": f"head -c 20000 /dev/zero | tr '\\0' '{n}'"})]),
                    Reply([ToolUse("bash", {"command": "head -c 20000 /dev/zero | tr '\\0' 'b'"})]), Reply([Text(f"Answer {n}.")])]
    world.fake.script(*replies)
    turns = _chat(world, setup, ["one", "two", "three", "four"])
    assert [t[-1]["stopReason"] for t in turns] == ["end_turn"] * 4
    assert world.fake.refused_too_long >= 1
    assert any(f["event"] == "status" and f["status"] == "compacted" for t in turns for f in t)


def test_the_cache_is_at_work_and_the_system_prompt_never_changes(caching_world: World) -> None:
    world = caching_world
    world.http.post("/users/alice/skills", json={"name": "style.md", "content": "# Style\n\nWrite plainly."})
    # A system prompt past the 1,024-token minimum a prefix needs to be cached.
    assert world.http.patch("/users/alice/settings", json={"systemPrompt": "Be exact. " * 600}).status_code == 200
    setup = world.setup("sess-cache", "alice")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo hi"})]), Reply([Text("First.")]),
                      Reply([ToolUse("bash", {"command": "echo again"})]), Reply([Text("Second.")]))
    turns = _chat(world, setup, ["first", "second"])
    usage = [t[-1]["usage"] for t in turns]
    assert usage[0]["cacheCreationInputTokens"] > 0 and usage[0]["cacheReadInputTokens"] > 0  # its 2nd call reads the 1st's
    assert usage[1]["cacheReadInputTokens"] > usage[1]["inputTokens"]
    # costUsd prices reads at $0.10 and 5-minute writes at $2.50 per million (Sonnet 5.5).
    u = usage[1]
    expected = (u["inputTokens"] * 2 + u["outputTokens"] * 10 + u["cacheReadInputTokens"] * 0.10 + u["cacheCreationInputTokens"] * 2.5) / 1e6
    assert turns[1][-1]["costUsd"] == pytest.approx(expected, abs=2e-6)
    systems = {json.dumps(body["system"]) for body in world.fake.conversation_requests}
    assert len(systems) == 1 and "style.md" in systems.pop()
    for body in world.fake.conversation_requests:
        marks = json.dumps(body).count('"cache_control"')
        assert 2 <= marks <= 4
    # Marks are on the wire only, never in the stored conversation.
    saved = world.http.get("/users/alice/conversations/sess-cache").text
    assert "cache_control" not in saved


def test_thinking_blocks_go_back_byte_for_byte_during_a_tool_loop(caching_world: World) -> None:
    world = caching_world
    assert world.http.patch("/users/alice/settings", json={"thinking": "adaptive"}).status_code == 200
    setup = world.setup("sess-think", "alice")
    thought = Thinking("I should look at the file first.", signature="EqQBCkgIARABGAIiQL" + "x" * 200 + "==")
    redacted = RedactedThinking("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP")
    world.fake.script(Reply([thought, redacted, Text("Let me check."), ToolUse("bash", {"command": "echo 42"})]),
                      Reply([Thinking("42 it is."), Text("It is 42.")]))
    frames = _chat(world, setup, ["what is it?"])[0]
    assert frames[-1]["stopReason"] == "end_turn" and frames[-1]["turns"] == 2
    thinking_stream = "".join(f["content"] for f in frames if f["event"] == "stream" and f["type"] == "thinking")
    assert thinking_stream == "I should look at the file first.42 it is."
    first, second = world.fake.conversation_requests
    assert first["thinking"] == {"type": "adaptive", "display": "summarized"}
    sent_back = second["messages"][1]["content"]
    assert sent_back[0] == {"type": "thinking", "thinking": thought.thinking, "signature": thought.signature}
    assert sent_back[1] == {"type": "redacted_thinking", "data": redacted.data}
    saved = world.http.get("/users/alice/conversations/sess-think").json()["conversation"]["messages"]
    assert saved[1]["content"][:2] == sent_back[:2]


def test_a_changed_system_prompt_drops_earlier_thinking_but_keeps_the_tool_loops(caching_world: World) -> None:
    world = caching_world
    setup = world.setup("sess-rethink", "alice")
    world.fake.script(Reply([Thinking("First plan."), ToolUse("bash", {"command": "echo 1"})]), Reply([Text("One.")]),
                      Reply([Thinking("Second plan."), ToolUse("bash", {"command": "echo 2"})]), Reply([Text("Two.")]))
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "first"}))
        first = receive_until(ws, "result", timeout=60)
        # New instructions change the system prompt: message 1's thinking no longer verifies.
        assert world.http.patch("/users/alice/settings", json={"systemPrompt": "Answer in French."}).status_code == 200
        ws.send(json.dumps({"action": "message", "prompt": "second"}))
        second = receive_until(ws, "result", timeout=60)
    assert first[-1]["stopReason"] == second[-1]["stopReason"] == "end_turn", second
    assert world.fake.refused_binding == 0
    last = world.fake.conversation_requests[-1]
    kinds = [[b.get("type") for b in m["content"]] for m in last["messages"] if m["role"] == "assistant"]
    assert kinds[0] == ["tool_use"] and kinds[2][0] == "thinking"  # old loop without, current loop with
    # The saved conversation still has every thinking block.
    saved = world.http.get("/users/alice/conversations/sess-rethink").json()["conversation"]["messages"]
    assert saved[1]["content"][0]["thinking"] == "First plan."


def test_a_message_with_100_skills_on_a_sandbox_host_reads_no_skill(
        caching_world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from chalicelib.config import Settings
    from sandbox_host.server import create_app
    from tests.support.sandbox_host import serve

    calls: Counter[str] = Counter()

    def counting(app: Any) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                calls[f"{scope['method']} {scope['path'].rsplit('/', 1)[-1]}"] += 1
            await app(scope, receive, send)
        return wrapped

    token = "host-token-for-test"
    host = create_app(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "host"), "SANDBOX_TOKEN": token}))
    with serve(counting(host)) as url:
        monkeypatch.setenv("SANDBOX_URL", url)
        monkeypatch.setenv("SANDBOX_TOKEN", token)
        world = caching_world
        for n in range(100):
            body = {"name": f"skill-{n:03d}", "content": f"---\nname: skill-{n:03d}\ndescription: Does task {n}. Use it for {n}.\n---\n# Skill {n}\n"}
            assert world.http.post("/users/alice/skills", json=body).status_code == 200
        setup = world.setup("sess-100", "alice")
        world.fake.script(Reply([Text("One.")]), Reply([Text("Two.")]))
        calls.clear()
        turns = _chat(world, setup, ["hello", "again"])
    assert [t[-1]["stopReason"] for t in turns] == ["end_turn", "end_turn"]
    sent = world.fake.conversation_requests[0]["system"]
    system = sent if isinstance(sent, str) else sent[0]["text"]
    assert system.count("/workspace/.claude/skills/skill-") == 100 and "Does task 99." in system
    assert world.fake.conversation_requests[1]["system"] == world.fake.conversation_requests[0]["system"]
    # Per message: one listing of the skills folder, and no file read at all.
    assert calls["GET list"] == 2 and calls["GET files"] == 0, calls
