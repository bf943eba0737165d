"""The offline stand-in speaks the Messages API well enough for the real SDK, and decides its
steps from the conversation alone."""

from __future__ import annotations

import anthropic
import pytest

from devserver.offline_model import LABEL, Answer, OfflineModel, ToolCall, decide, skill_files

BASH = [{"type": "bash_20250124", "name": "bash"}]
LISTING = """/workspace/.claude/skills:
debugging.md
pdf-tools

/workspace/.claude/skills/pdf-tools:
SKILL.md
scripts

/workspace/.claude/skills/pdf-tools/scripts:
fill.py
"""


def _result(text: str, is_error: bool = False) -> dict:  # type: ignore[type-arg]
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": text, "is_error": is_error}]}


def test_skill_files_lists_files_not_folders() -> None:
    assert skill_files(LISTING) == ["/workspace/.claude/skills/debugging.md", "/workspace/.claude/skills/pdf-tools/SKILL.md",
                                    "/workspace/.claude/skills/pdf-tools/scripts/fill.py"]
    assert skill_files("ls: cannot access '/workspace/.claude/skills': No such file or directory\n[exit code 2]") == []


def test_steps_list_then_read_then_answer() -> None:
    prompt = {"role": "user", "content": "What do I know?"}
    step = decide({"messages": [prompt], "tools": BASH})
    assert step == ToolCall(preface=f"{LABEL} Let me look at your skills first.\n", command="ls -R /workspace/.claude/skills")
    step = decide({"messages": [prompt, {"role": "assistant", "content": []}, _result(LISTING)], "tools": BASH})
    assert isinstance(step, ToolCall) and step.command == "cat /workspace/.claude/skills/debugging.md"
    step = decide({"messages": [prompt, {"role": "assistant", "content": []}, _result(LISTING), {"role": "assistant", "content": []},
                                _result("# Debugging Skill\n\nRead the logs.")], "tools": BASH})
    assert isinstance(step, Answer) and step.text.startswith(LABEL) and "not from Claude" in step.text
    assert "found 3 files" in step.text and "\u201c# Debugging Skill\u201d" in step.text and "What do I know?" in step.text


def test_no_skills_and_no_tools_are_answered_plainly() -> None:
    prompt = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    empty = decide({"messages": [prompt, {"role": "assistant", "content": []}, _result("ls: cannot access\n[exit code 2]")], "tools": BASH})
    assert isinstance(empty, Answer) and "found no skill files" in empty.text
    assert isinstance(decide({"messages": [prompt]}), Answer)
    # A new prompt starts over, whatever came before.
    again = decide({"messages": [prompt, {"role": "assistant", "content": []}, _result(LISTING), {"role": "assistant", "content": []},
                                 {"role": "user", "content": "and now?"}], "tools": BASH})
    assert isinstance(again, ToolCall) and again.command.startswith("ls -R")


def test_the_sdk_streams_its_tool_call_and_its_answer() -> None:
    with OfflineModel(delay=0) as model:
        client = anthropic.Anthropic(api_key="offline", base_url=model.url, max_retries=0)
        messages = [{"role": "user", "content": "What skills do I have?"}]
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=messages, tools=BASH) as stream:  # type: ignore[arg-type]
            texts = list(stream.text_stream)
            first = stream.get_final_message()
        assert first.stop_reason == "tool_use" and "".join(texts).startswith(LABEL)
        tool = next(b for b in first.content if b.type == "tool_use")
        assert tool.name == "bash" and tool.input == {"command": "ls -R /workspace/.claude/skills"}
        messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "/workspace/.claude/skills:\n"}]}]
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=messages, tools=BASH) as stream:  # type: ignore[arg-type]
            deltas = list(stream.text_stream)
            final = stream.get_final_message()
        assert final.stop_reason == "end_turn" and len(deltas) > 5 and "found no skill files" in "".join(deltas)
        plain = client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert plain.content[0].type == "text" and plain.content[0].text.startswith(LABEL)  # type: ignore[union-attr]
        with pytest.raises(anthropic.NotFoundError, match="only POST /v1/messages"):
            client.models.list()
