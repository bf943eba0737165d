"""The runner's view of its session state: a poll reads the body only when the state changed,
and a write starts from what is known (no read), reading only when it changed meanwhile."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from chalicelib.agent.memory import AgentMemory
from chalicelib.realtime.state import SessionState, StateCursor, StateStore, Subscriber
from chalicelib.services.skill_index import SkillEntry, SkillIndex
from chalicelib.storage.local import LocalDirectoryStore


class CountingStore:
    """The local store, counting the calls made through it."""

    def __init__(self, inner: LocalDirectoryStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kwargs)

        return counted

    def count(self, name: str) -> int:
        return self.calls[name]

    def reset(self) -> None:
        self.calls.clear()


def test_a_poll_reads_no_body_until_the_state_changes(tmp_path: Path) -> None:
    store = CountingStore(LocalDirectoryStore(tmp_path))
    states = StateStore(store)  # type: ignore[arg-type]
    _, written = states.update_versioned("s", lambda s: None,
                                         create=lambda: SessionState(session_id="s", user_id="u", conversation_id="s"))
    cursor = StateCursor(states, "s", written)
    store.reset()
    for _ in range(5):
        assert cursor.refresh() == written.state
    assert cursor.bytes_read == 0 and store.count("get") == 0 and store.count("head") == 5
    states.update("s", lambda s: s.subscribe(Subscriber(connection_id="c2", domain_name="d", stage="api")))
    store.reset()
    seen = cursor.refresh()
    assert seen is not None and [s.connection_id for s in seen.subscribers] == ["c2"]
    assert 0 < cursor.bytes_read < 2_000 and store.count("get") == 1


def test_a_write_from_the_known_state_reads_nothing_unless_it_changed(tmp_path: Path) -> None:
    store = CountingStore(LocalDirectoryStore(tmp_path))
    states = StateStore(store)  # type: ignore[arg-type]
    _, written = states.update_versioned("s", lambda s: None,
                                         create=lambda: SessionState(session_id="s", user_id="u", conversation_id="s"))
    cursor = StateCursor(states, "s", written)
    store.reset()
    cursor.update(lambda s: setattr(s, "last_seq", 5))
    assert store.count("get") == 0 and store.count("put") == 1
    states.update("s", lambda s: setattr(s, "max_turns", 3))  # another writer (an edge)
    store.reset()
    _, state = cursor.update(lambda s: setattr(s, "last_seq", 6))
    assert state.last_seq == 6 and state.max_turns == 3  # re-read and re-applied, nothing lost
    assert store.count("get") == 1 and store.count("put") == 2  # the refused write, the retry


def test_the_state_holds_no_agent_memory_at_any_skill_count(tmp_path: Path) -> None:
    # Old layout: the skill index rode in the state (68 KB at 200 skills). It is read, never written.
    index = SkillIndex(entries=[SkillEntry(name=f"skill-{i}", description="d" * 200, path=f"skills/s{i}.md", size=300)
                                for i in range(200)], fingerprint="f")
    states = StateStore(LocalDirectoryStore(tmp_path))
    old = SessionState(session_id="s", user_id="u", conversation_id="s", agent_memory=AgentMemory(skill_index=index))
    assert old.agent_memory is not None
    _, written = states.update_versioned("s", lambda s: None, create=lambda: old)
    assert len(written.state.model_dump_json(by_alias=True)) < 2_000
