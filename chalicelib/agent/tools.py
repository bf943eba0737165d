"""The Anthropic-defined client tools, executed in the session's sandbox.

    bash_20250124 (name "bash"): a persistent shell; input `command`, or `restart: true`.
    text_editor_20250728 (name "str_replace_based_edit_tool"): view / create / str_replace / insert.

Every failure becomes a tool_result with `is_error: true` and a message the model can act on;
nothing here raises into the agent loop.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from chalicelib.sandbox.base import (
    Sandbox,
    SandboxError,
    SandboxFileNotFound,
    SandboxGone,
    SandboxIsADirectory,
    SandboxPathError,
)
from chalicelib.telemetry import tracing

TOOLS: list[dict[str, Any]] = [
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
]
MAX_OUTPUT = 30_000
BASH_TIMEOUT = 120.0


class ToolResult(BaseModel):
    """What goes back to the model for one tool_use block."""

    tool_use_id: str
    content: str
    is_error: bool = False

    def to_block(self) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": self.tool_use_id, "content": self.content}
        if self.is_error:
            block["is_error"] = True
        return block


class ToolFailure(Exception):
    """A tool input the model can correct; becomes an is_error result."""


def run_tool(sandbox: Sandbox, tool_use_id: str, name: str, tool_input: dict[str, Any], *, bash_timeout: float = BASH_TIMEOUT) -> ToolResult:
    """Execute one tool_use block (in a span of its own: the sandbox host's spans are its children)."""
    with tracing.span(f"tool {name}", {"gen_ai.tool.name": name, "gen_ai.tool.call.id": tool_use_id}) as span:
        result = _run_tool(sandbox, tool_use_id, name, tool_input, bash_timeout)
        span.set({"tool.is_error": result.is_error})
        return result


def _run_tool(sandbox: Sandbox, tool_use_id: str, name: str, tool_input: dict[str, Any], bash_timeout: float) -> ToolResult:
    try:
        if name == "bash":
            content = _bash(sandbox, tool_input, bash_timeout)
        elif name == "str_replace_based_edit_tool":
            content = _edit(sandbox, tool_input)
        else:
            raise ToolFailure(f"Unknown tool {name!r}: the tools are 'bash' and 'str_replace_based_edit_tool'.")
    except SandboxGone:
        raise  # the runner recreates the sandbox; the model cannot fix this
    except ToolFailure as exc:
        return ToolResult(tool_use_id=tool_use_id, content=str(exc), is_error=True)
    except SandboxPathError as exc:
        return ToolResult(tool_use_id=tool_use_id, content=str(exc), is_error=True)
    except SandboxFileNotFound as exc:
        return ToolResult(tool_use_id=tool_use_id, content=str(exc), is_error=True)
    except SandboxError as exc:
        return ToolResult(tool_use_id=tool_use_id, content=f"The sandbox failed: {exc}", is_error=True)
    except OSError as exc:
        # The sandbox maps the OSErrors it expects; one it did not must still not end the turn.
        return ToolResult(tool_use_id=tool_use_id, content=f"The tool failed on {tool_input.get('path', 'the sandbox')}: "
                          f"{exc.strerror or exc}.", is_error=True)
    return ToolResult(tool_use_id=tool_use_id, content=_cap(content))


def _bash(sandbox: Sandbox, tool_input: dict[str, Any], timeout: float) -> str:
    shell = sandbox.bash()
    if tool_input.get("restart"):
        shell.restart()
        return "The shell was restarted."
    command = tool_input.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ToolFailure("bash needs a non-empty 'command' (or 'restart': true).")
    result = shell.run(command, timeout=timeout, max_output=MAX_OUTPUT)
    text = result.stdout
    if result.stdout_truncated:
        text += f"\n[output truncated to {MAX_OUTPUT} characters]"
    if result.timed_out:
        raise ToolFailure(text + f"\nThe command timed out after {timeout:g} s and was killed; the shell keeps its state.")
    if result.exit_code != 0:
        text += f"\n[exit code {result.exit_code}]"
    return text if text.strip() else "(no output)"


def _edit(sandbox: Sandbox, tool_input: dict[str, Any]) -> str:
    command = tool_input.get("command")
    path = tool_input.get("path")
    if not isinstance(path, str) or not path:
        raise ToolFailure("str_replace_based_edit_tool needs a 'path' under /workspace.")
    if command == "view":
        return _view(sandbox, path, tool_input.get("view_range"))
    if command == "create":
        text = tool_input.get("file_text")
        if not isinstance(text, str):
            raise ToolFailure("create needs 'file_text'.")
        sandbox.write_file(path, text)
        return f"File created: {path}"
    if command == "str_replace":
        old, new = tool_input.get("old_str"), tool_input.get("new_str", "")
        if not isinstance(old, str) or not old:
            raise ToolFailure("str_replace needs a non-empty 'old_str'.")
        text = _text(sandbox, path)
        count = text.count(old)
        if count == 0:
            raise ToolFailure(f"No match for old_str in {path}: it must match the file exactly, whitespace included.")
        if count > 1:
            raise ToolFailure(f"old_str occurs {count} times in {path}: include more context so it matches exactly once.")
        sandbox.write_file(path, text.replace(old, str(new or ""), 1))
        return f"The file {path} has been edited."
    if command == "insert":
        new = tool_input.get("new_str", tool_input.get("insert_text"))
        line = tool_input.get("insert_line")
        if not isinstance(new, str) or not isinstance(line, int):
            raise ToolFailure("insert needs 'insert_line' (a line number, 0 for the top) and 'new_str'.")
        lines = _text(sandbox, path).split("\n")
        if not 0 <= line <= len(lines):
            raise ToolFailure(f"insert_line {line} is outside the file (0-{len(lines)}).")
        lines[line:line] = new.split("\n")
        sandbox.write_file(path, "\n".join(lines))
        return f"Inserted {len(new.splitlines()) or 1} line(s) after line {line} of {path}."
    raise ToolFailure(f"Unknown command {command!r}: use view, create, str_replace or insert.")


def _text(sandbox: Sandbox, path: str) -> str:
    try:
        return sandbox.read_file(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ToolFailure(f"{path} is not a UTF-8 text file.") from None


def _view(sandbox: Sandbox, path: str, view_range: Any) -> str:
    try:
        text = _text(sandbox, path)
    except SandboxIsADirectory:
        entries = sandbox.list_files(path, recursive=True)
        shown = [e.path + ("/" if e.is_dir else "") for e in entries if "/." not in e.path[len(path):]][:500]
        return f"Files under {path}:\n" + "\n".join(shown)
    lines = text.split("\n")
    start, end = 1, len(lines)
    if view_range is not None:
        if not (isinstance(view_range, list) and len(view_range) == 2 and all(isinstance(n, int) for n in view_range)):
            raise ToolFailure("view_range must be [start_line, end_line] (end -1 for the end of the file).")
        start, end = view_range[0], (len(lines) if view_range[1] == -1 else view_range[1])
        if not 1 <= start <= end <= len(lines):
            raise ToolFailure(f"view_range {view_range} is outside the file (1-{len(lines)}).")
    return "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, end + 1))


def _cap(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT else text[:MAX_OUTPUT] + f"\n[truncated to {MAX_OUTPUT} characters]"
