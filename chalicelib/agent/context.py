"""The system prompt: an index of the user's skills, then the user's own instructions.

Progressive disclosure: only each skill's name, description and path go in; Claude reads a
skill's body with its tools when the task calls for it.
"""

from __future__ import annotations

from chalicelib.sandbox.base import Sandbox, SandboxError
from chalicelib.services.skill_format import SKILL_FILE, describe

SKILLS_DIR = "/workspace/.claude/skills"

BASE_PROMPT = """You are a helpful agent working in a sandboxed Linux workspace at /workspace.
You can run shell commands with the bash tool and read or edit files with the text editor tool.
The user's skills are instructions for specific tasks, stored under {skills_dir}. When a task
matches a skill's description, read that skill's file first and follow it."""


def skill_index(sandbox: Sandbox) -> list[tuple[str, str, str]]:
    """(name, description, path) of each skill in the sandbox: SKILL.md folders and flat .md files."""
    try:
        entries = sandbox.list_files(SKILLS_DIR, recursive=True)
    except SandboxError:
        return []
    mains = sorted(
        e.path for e in entries
        if not e.is_dir and (e.path.count("/") == SKILLS_DIR.count("/") + 1 and e.path.endswith(".md")
                             or e.path.count("/") == SKILLS_DIR.count("/") + 2 and e.path.endswith("/" + SKILL_FILE))
    )
    index = []
    for path in mains[:200]:
        try:
            text = sandbox.read_file(path)[:64 * 1024].decode("utf-8", "replace")
        except SandboxError:
            continue
        is_folder = path.endswith("/" + SKILL_FILE)
        name = path.split("/")[-2] if is_folder else path.split("/")[-1]
        index.append((name, describe(text, is_skill_md=is_folder), path))
    return index


def system_prompt(sandbox: Sandbox, user_prompt: str | None) -> str:
    """The whole system prompt for a turn."""
    parts = [BASE_PROMPT.format(skills_dir=SKILLS_DIR)]
    skills = skill_index(sandbox)
    if skills:
        lines = [f"- {name}: {description or '(no description)'} (read {path})" for name, description, path in skills]
        parts.append("<available_skills>\n" + "\n".join(lines) + "\n</available_skills>")
    else:
        parts.append("The user has no skills yet.")
    if user_prompt:
        parts.append("The user's instructions:\n" + user_prompt)
    return "\n\n".join(parts)
