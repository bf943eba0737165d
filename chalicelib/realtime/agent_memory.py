"""Where the agent's memory between messages lives, now that it is out of the session state.

The state is read by every frame and polled while a turn runs, so it holds nothing that grows
with the user's skills or history:

- the **skill index** (68 KB at 200 skills) is built by /setup into the session record, which
  the runner reads at turn start (in parallel with the conversation), or not at all when this
  process built or read it for the session since that /setup (`skills_built_at` in the state
  says which /setup is the latest). Either way it is checked against the sandbox's listing
  before use (`agent.context.current_skill_index`), so a cached index is never stale;
- the **working context** (the compaction summary and where the kept messages start) belongs
  to the conversation it describes: it is kept in the conversation's metadata
  (`workingContext`) and saved with it, by the same fenced write.

States written before kept both in `agentMemory`: its working context is used when the
conversation has none (and saved into it), and the next turn's end drops it from the state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from chalicelib.agent.memory import AgentMemory, WorkingContext
from chalicelib.services.conversation_parts import CONTEXT_FROM_FIELD
from chalicelib.services.skill_index import SkillIndex

#: The conversation metadata field the working context is kept in.
WORKING_CONTEXT = "workingContext"
#: How many sessions' skill indexes a process keeps.
CACHED_INDEXES = 256


class SkillIndexCache:
    """The skill indexes this process last used, per session (least recently used dropped)."""

    def __init__(self, size: int = CACHED_INDEXES) -> None:
        self.size = size
        self._indexes: OrderedDict[str, SkillIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str, not_before: datetime | None) -> SkillIndex | None:
        """The cached index, unless it predates the session's latest /setup (`not_before`)."""
        with self._lock:
            index = self._indexes.get(session_id)
            if index is None or (not_before is not None and index.built_at < not_before):
                return None
            self._indexes.move_to_end(session_id)
            return index

    def put(self, session_id: str, index: SkillIndex) -> None:
        with self._lock:
            self._indexes[session_id] = index
            self._indexes.move_to_end(session_id)
            while len(self._indexes) > self.size:
                self._indexes.popitem(last=False)


#: Shared by every runner of the process (a warm Lambda runs many turns of the same sessions).
SKILL_INDEXES = SkillIndexCache()


class TurnMemory:
    """The agent's memory for one turn: read from the record (or cache) and the conversation,
    its changes kept in the cache and in the conversation's metadata (saved with it)."""

    def __init__(self, session_id: str, metadata: dict[str, Any], skill_index: SkillIndex | None,
                 legacy_context: WorkingContext | None = None, cache: SkillIndexCache = SKILL_INDEXES) -> None:
        self.session_id = session_id
        self.metadata = metadata
        self.cache = cache
        context = _context_in(metadata)
        if context is None and legacy_context is not None:
            # Moved on first touch: the turn's conversation save carries it from now on.
            context = legacy_context
            _record(metadata, legacy_context)
        self.memory = AgentMemory(skill_index=skill_index, context=context)

    def keep(self, memory: AgentMemory) -> None:
        """The agent's `save_memory`: no storage write of its own. The index is cached for the
        next message; the context goes with the turn's next conversation save (fenced by the
        lease like the messages it describes)."""
        if memory.skill_index is not None:
            self.cache.put(self.session_id, memory.skill_index)
        if memory.context is not None:
            _record(self.metadata, memory.context)
        else:
            self.metadata.pop(WORKING_CONTEXT, None)
            self.metadata.pop(CONTEXT_FROM_FIELD, None)


def _record(metadata: dict[str, Any], context: WorkingContext) -> None:
    """Keep the context in the conversation's metadata, and where its kept messages start as the
    point the next turn reads the stored conversation from (`contextFrom`, see conversation_parts)."""
    metadata[WORKING_CONTEXT] = context.model_dump(mode="json", by_alias=True)
    metadata[CONTEXT_FROM_FIELD] = context.kept_from


def _context_in(metadata: dict[str, Any]) -> WorkingContext | None:
    raw = metadata.get(WORKING_CONTEXT)
    if not isinstance(raw, dict):
        return None
    try:
        return WorkingContext.model_validate(raw)
    except ValidationError:
        return None  # not ours to trust: the full history is sent, and compacted again if needed
