"""./scripts/chat's interactive input: how lines become one prompt."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scripts.chat import PASTE_END, PASTE_START, read_prompt


def lines(*typed: str) -> Callable[[str], str]:
    """An `ask` that answers with these lines, then raises EOFError like input() at the end."""
    queue = list(typed)

    def ask(prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)
    return ask


def test_a_bracketed_paste_is_one_prompt_with_its_newlines() -> None:
    assert read_prompt(lines(f"{PASTE_START}Step one", "Step two", f"Step three{PASTE_END}", "next prompt")) == \
        "Step one\nStep two\nStep three"


def test_text_typed_around_a_paste_joins_it() -> None:
    assert read_prompt(lines(f"Explain: {PASTE_START}a = 1", f"b = 2{PASTE_END} please")) == "Explain: a = 1\nb = 2 please"


def test_a_paste_ending_in_a_newline_waits_for_enter() -> None:
    assert read_prompt(lines(f"{PASTE_START}one", "two", PASTE_END)) == "one\ntwo\n"


def test_a_trailing_backslash_continues_the_prompt() -> None:
    assert read_prompt(lines("first line \\", "second line \\", "third", "next")) == "first line \nsecond line \nthird"


def test_a_triple_quoted_block_runs_to_its_closing_quotes() -> None:
    ask = lines('"""', "def f():", "    return 1", '"""', "next")
    assert read_prompt(ask) == "def f():\n    return 1"
    assert ask("") == "next"  # nothing read past the block
    assert read_prompt(lines('"""Summarise', "this", 'text"""')) == "Summarise\nthis\ntext"
    assert read_prompt(lines('"""one line"""')) == "one line"


def test_the_end_of_input_ends_an_open_prompt() -> None:
    assert read_prompt(lines('"""', "unfinished")) == "unfinished"
    assert read_prompt(lines("dangling \\")) == "dangling "
    with pytest.raises(EOFError):
        read_prompt(lines())


def test_a_plain_line_is_a_prompt() -> None:
    assert read_prompt(lines("hello", "again")) == "hello"
