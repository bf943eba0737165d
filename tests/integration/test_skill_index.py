"""The skill index against a real bubblewrap sandbox: reused while the skills folder is
unchanged (one listing, no reads), rebuilt from only the changed files when it is not."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.agent.context import current_skill_index, system_blocks
from chalicelib.config import Settings
from chalicelib.sandbox.base import Sandbox, SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider
from chalicelib.services.skill_index import SKILLS_DIR, build_index

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")]


class Counting:
    """A sandbox that counts the calls made through it."""

    def __init__(self, inner: Sandbox) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if callable(attr):
            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return attr(*args, **kwargs)
            return counted
        return attr


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    provider = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sandboxes")}))
    yield provider.create("index-1", SandboxOptions())
    provider.destroy("index-1")


def test_the_index_is_reused_until_a_skill_changes(sandbox: Sandbox) -> None:
    files = {
        f"{SKILLS_DIR}/notes.md": b"# Notes\n\nKeep notes.",
        f"{SKILLS_DIR}/pdf-tools/SKILL.md": b"---\nname: pdf-tools\ndescription: Fill PDF forms.\n---\n# PDF\n",
        f"{SKILLS_DIR}/pdf-tools/scripts/fill.py": b"print(1)",
    }
    sandbox.write_files(files)
    at_setup = build_index(files)  # what /setup builds from the bodies it read
    counting = Counting(sandbox)
    index, changed = current_skill_index(counting, at_setup)  # type: ignore[arg-type]
    assert not changed and index is at_setup and counting.calls == ["list_files"]
    assert [e.name for e in index.entries] == ["notes.md", "pdf-tools"]
    assert "Fill PDF forms. (read /workspace/.claude/skills/pdf-tools/SKILL.md)" in system_blocks(index, None)[0]["text"]

    # The agent writes a new skill: the next message lists, sees it, and reads only that file.
    sandbox.write_file(f"{SKILLS_DIR}/deploy.md", "# Deploy\n\nShip on Fridays never.")
    counting.calls.clear()
    index, changed = current_skill_index(counting, at_setup)  # type: ignore[arg-type]
    assert changed and counting.calls == ["list_files", "read_file"]
    assert [e.name for e in index.entries] == ["deploy.md", "notes.md", "pdf-tools"]
    assert index.entries[0].description == "Deploy: Ship on Fridays never."
