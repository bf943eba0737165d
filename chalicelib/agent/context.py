"""The system prompt: the base instructions, the index of the user's skills, the user's own
instructions.

Progressive disclosure: only each skill's name, description and path go in; Claude reads a
skill's body with its tools when the task calls for it. The prompt must be byte-identical from
one message of a session to the next (the prompt cache matches prefixes exactly), so it is
built only from the stored skill index and the user's settings: nothing time-dependent.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
from typing import Any

from chalicelib.sandbox.base import Sandbox, SandboxError, SandboxFileNotFound
from chalicelib.services.skill_index import (
    MAX_INDEXED,
    SKILLS_DIR,
    SkillIndex,
    entry,
    fingerprint,
    is_main_file,
)

log = logging.getLogger(__name__)

BASE_PROMPT = """You are a helpful agent working in a sandboxed Linux workspace at /workspace.
You can run shell commands with the bash tool and read or edit files with the text editor tool.
The user's skills are instructions for specific tasks, stored under {skills_dir}. When a task
matches a skill's description, read that skill's file first and follow it."""


def current_skill_index(sandbox: Sandbox, known: SkillIndex | None) -> tuple[SkillIndex, bool]:
    """The skill index for this message, and whether it changed.

    One listing of the skills folder (one sandbox call) tells whether the main files are the
    ones `known` was built from; only then is `known` reused as is. Otherwise only the main
    files that are new or changed size are read (a new session without an index reads all).
    """
    try:
        listed = sandbox.list_files(SKILLS_DIR, recursive=True)
    except SandboxFileNotFound:
        listed = []  # no skills folder: the user has no skills
    except SandboxError as exc:
        log.warning("listing %s failed (%s); keeping the last skill index", SKILLS_DIR, exc)
        return (known or SkillIndex(fingerprint=fingerprint([]))), False
    mains = sorted((e.path, e.size) for e in listed if not e.is_dir and is_main_file(e.path))
    seen = fingerprint(mains)
    if known is not None and known.fingerprint == seen:
        return known, False
    reusable = {(e.path, e.size): e for e in (known.entries if known else [])}
    entries = []
    for path, size in mains[:MAX_INDEXED]:
        if (path, size) in reusable:
            entries.append(reusable[(path, size)])
            continue
        try:
            entries.append(entry(path, sandbox.read_file(path)))
        except SandboxError:
            continue
    return SkillIndex(entries=entries, fingerprint=seen), True


def system_blocks(index: SkillIndex, user_prompt: str | None) -> list[dict[str, Any]]:
    """The system prompt as content blocks (the caller marks the cache breakpoint)."""
    parts = [BASE_PROMPT.format(skills_dir=SKILLS_DIR)]
    if index.entries:
        lines = [f"- {_quoted(e.name)}: {_quoted(e.description) or '(no description)'} (read {_quoted(e.path)})"
                 for e in index.entries]
        parts.append("<available_skills>\n" + "\n".join(lines) + "\n</available_skills>")
    else:
        parts.append("The user has no skills yet.")
    if user_prompt:
        parts.append("The user's instructions:\n" + user_prompt)
    return [{"type": "text", "text": "\n\n".join(parts)}]


def _quoted(text: str) -> str:
    """Skill text as data inside the prompt's markup: `<`, `>` and `&` escaped, so a heading
    such as `</available_skills>` cannot close the list, and line breaks folded, so one skill
    cannot add lines that read as other entries or as instructions after the list."""
    return html.escape(" ".join(text.split()), quote=False)


def system_sha256(system: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """A digest of everything before the messages: when it changes, old thinking signatures break."""
    return hashlib.sha256(json.dumps([system, tools], sort_keys=True).encode()).hexdigest()
