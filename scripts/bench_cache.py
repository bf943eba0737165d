"""Prompt caching: what a tool-heavy conversation's input costs, against a caching stand-in.

The scenario of issue 13: a 2-message conversation with 12 tool calls (6 per message), a
14,000-character system prompt and 6,000-character tool results. The real agent loop runs it
(real anthropic SDK, real bubblewrap sandbox running the bash tool) against
tests/fakes/caching_anthropic.py, which caches and bills as the API documents. The requests the
loop sent are then billed again, on a fresh cache each, with the marks other strategies would
have sent. Figure: billed input / uncached input (reads 0.1x, 5-minute writes 1.25x).

    .venv/bin/python -m scripts.bench_cache
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

SYSTEM_CHARS = 14_000
RESULT_CHARS = 6_000
MESSAGES = 2
TOOL_CALLS_PER_MESSAGE = 6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--tool-calls", type=int, default=TOOL_CALLS_PER_MESSAGE, help="per message")
    args = parser.parse_args(argv)

    import anthropic

    from chalicelib.agent.context import system_blocks
    from chalicelib.agent.loop import run_turn
    from chalicelib.agent.pricing import PriceTable
    from chalicelib.config import Settings
    from chalicelib.sandbox.base import SandboxOptions
    from chalicelib.sandbox.factory import build_sandbox_provider
    from chalicelib.services.skill_index import SkillIndex, fingerprint
    from tests.fakes.caching_anthropic import CachingAnthropic, PromptCache, strip_marks
    from tests.fakes.fake_anthropic import Reply, Text, ToolUse

    with tempfile.TemporaryDirectory() as tmp, CachingAnthropic() as fake:
        settings = Settings.from_env({"DATA_DIR": tmp, "SANDBOX_ROOT": str(Path(tmp) / "sandboxes")})
        provider = build_sandbox_provider(settings)
        sandbox = provider.create("bench-cache", SandboxOptions())
        sandbox.write_file("/workspace/out.txt", ("0123456789abcdef" * (RESULT_CHARS // 16 + 1))[:RESULT_CHARS])
        client = anthropic.Anthropic(api_key="bench", base_url=fake.url, max_retries=0)
        user_prompt = ("Project conventions: " + "keep functions small, name things for what they do, test the edges. " * 400)
        system = system_blocks(SkillIndex(fingerprint=fingerprint([])), user_prompt[: SYSTEM_CHARS - 411])
        history: list[dict[str, Any]] = []
        for message in range(args.messages):
            fake.script(*[Reply([Text(f"Step {i + 1}."), ToolUse("bash", {"command": "cat /workspace/out.txt"})])
                          for i in range(args.tool_calls)], Reply([Text("Done.")]))
            saved: list[list[dict[str, Any]]] = []
            result = run_turn(
                client=client, model="claude-sonnet-5-5", system=system, history=history, prompt=f"Task {message + 1}: read out.txt {args.tool_calls} times.",
                prompt_id=f"p{message}", max_turns=50, max_tokens=1024, sandbox=sandbox, prices=PriceTable.from_json(None),
                emit=lambda event: None, should_stop=lambda: False, on_messages_changed=lambda m, saved=saved: saved.append(list(m)),
            )
            assert result.error_code is None, result
            history = saved[-1]
        provider.destroy("bench-cache")

    requests = fake.conversation_requests
    system_chars = sum(len(b["text"]) for b in requests[0]["system"])
    uncached = sum(b.prompt_tokens for b in fake.bills)

    def rebill(transform: Any) -> float:
        cache = PromptCache()
        return sum(cache.bill(transform(body)).billed() for body in requests)

    strategies = [
        ("no cache_control", rebill(lambda b: strip_marks(b))),
        ("breakpoint on the system prompt only", rebill(lambda b: strip_marks(b, keep_system=True))),
        ("system + rolling breakpoints (what the loop sends)", sum(b.billed() for b in fake.bills)),
    ]
    print(f"{args.messages} messages, {args.messages * args.tool_calls} tool calls, {len(requests)} model calls, "
          f"{system_chars:,}-character system prompt, {RESULT_CHARS:,}-character tool results")
    print(f"uncached input: {uncached:,} tokens (stand-in estimate: JSON characters / 4)")
    for name, billed in strategies:
        print(f"  {name:52s} billed input {billed:>10,.0f}  = {billed / uncached:.2f}x uncached")
    reads = sum(b.cache_read_input_tokens for b in fake.bills)
    writes = sum(b.cache_creation_input_tokens for b in fake.bills)
    print(f"as sent: cache reads {reads:,}, cache writes {writes:,}, plain input {sum(b.input_tokens for b in fake.bills):,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
