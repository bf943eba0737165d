"""The bucket layout, exactly the original's, plus the session records.

    users/{userId}/skills/{name}.md                   flat skill (the original's form)
    users/{userId}/skills/{name}/SKILL.md (+ files)   Agent Skills folder
    users/{userId}/skills/{name}/.skill-manifest.json the folder's files as its last upload wrote them
    users/{userId}/cache/skill-uploads/{name}.json    a folder upload's writer lease
    users/{userId}/conversations/{conversationId}.json
    users/{userId}/settings/preferences.json
    users/{userId}/cache/skills-bundle.json           copies of the small skill files (derived)
    users/{userId}/cache/skill-catalog.json           every skill's listing fields, folded (derived)
    users/{userId}/cache/skill-catalog/{name}.json    one skill's listing fields, written by its upload
    sessions/{sessionId}/...                          session records and turn state

Callers pass ids that `chalicelib.ids` has validated; every function here re-checks, so a
key outside `users/{userId}/` cannot be built by mistake.
"""

from __future__ import annotations

from chalicelib.ids import validate_id, validate_skill_path

USERS = "users/"
SESSIONS = "sessions/"
# A skill file's path may not start with a dot, so no upload can overwrite the manifest.
SKILL_MANIFEST = ".skill-manifest.json"


def user_prefix(user_id: str) -> str:
    return f"{USERS}{validate_id(user_id, 'userId')}/"


def skills_prefix(user_id: str) -> str:
    return f"{user_prefix(user_id)}skills/"


def skill_key(user_id: str, relative_path: str) -> str:
    """Key of a file under the user's skills folder (`debugging.md`, `pdf/SKILL.md`)."""
    return skills_prefix(user_id) + validate_skill_path(relative_path)


def skill_manifest_key(user_id: str, folder: str) -> str:
    """The manifest of a folder skill (see services/skill_folders.py)."""
    return skills_prefix(user_id) + validate_skill_path(folder, "skill folder name") + "/" + SKILL_MANIFEST


def skill_lease_key(user_id: str, folder: str) -> str:
    """The writer lease of a folder skill: outside `skills/`, so never listed or mounted."""
    return f"{user_prefix(user_id)}cache/skill-uploads/{validate_skill_path(folder, 'skill folder name')}.json"


def skills_bundle_key(user_id: str) -> str:
    """The skills bundle: derived from the skill files, so it sits outside `skills/`."""
    return f"{user_prefix(user_id)}cache/skills-bundle.json"


def skill_catalog_key(user_id: str) -> str:
    """The folded skills catalog (services/skill_catalog.py): derived, outside `skills/`."""
    return f"{user_prefix(user_id)}cache/skill-catalog.json"


def skill_catalog_entry_key(user_id: str, name: str) -> str:
    """One skill's own catalog entry, written by its upload."""
    return f"{user_prefix(user_id)}cache/skill-catalog/{validate_skill_path(name, 'skill name')}.json"


def conversations_prefix(user_id: str) -> str:
    return f"{user_prefix(user_id)}conversations/"


def conversation_key(user_id: str, conversation_id: str) -> str:
    return f"{conversations_prefix(user_id)}{validate_id(conversation_id, 'conversationId')}.json"


def settings_key(user_id: str) -> str:
    return f"{user_prefix(user_id)}settings/preferences.json"


def limits_key(user_id: str) -> str:
    """The operator's per-user limit overrides (PUT /users/{userId}/limits)."""
    return f"{user_prefix(user_id)}quota/limits.json"


def quota_counter_key(user_id: str, name: str) -> str:
    """One of the user's quota counters (`sessions`, `messages`), updated with conditional writes."""
    return f"{user_prefix(user_id)}quota/{validate_id(name, 'counter name')}.json"


def usage_key(user_id: str, day: str) -> str:
    """The user's metered usage of one UTC day (`YYYY-MM-DD`)."""
    return f"{user_prefix(user_id)}usage/{validate_id(day, 'day')}.json"


def session_prefix(session_id: str) -> str:
    return f"{SESSIONS}{validate_id(session_id, 'sessionId')}/"


def session_key(session_id: str, name: str = "session.json") -> str:
    """Key of one of a session's records (`session.json`, `turn.json`, ...)."""
    return session_prefix(session_id) + validate_skill_path(name, "session record name")


def conversation_parts_prefix(user_id: str, conversation_id: str) -> str:
    """Where a long conversation's sealed, immutable parts live (outside the listed folder)."""
    return f"{user_prefix(user_id)}conversation-parts/{validate_id(conversation_id, 'conversationId')}/"
