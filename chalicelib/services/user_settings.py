"""Per-user settings at `users/{userId}/settings/preferences.json`.

The agent reads `model`, `maxTurns`, `systemPrompt` and `allowNetwork` from here: these are
the user's (or the app's) choices, not the websocket client's.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from chalicelib.errors import BadRequest, PreconditionFailed
from chalicelib.services.models import ApiModel
from chalicelib.storage import ObjectNotFound, ObjectStore, layout
from chalicelib.storage import PreconditionFailed as StoragePreconditionFailed

MAX_SETTINGS_BYTES = 256 * 1024


class UserSettings(ApiModel):
    """What a user can configure about their agent."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    max_turns: int | None = Field(default=None, ge=1, le=200)
    system_prompt: str | None = Field(default=None, max_length=20_000)
    allow_network: bool = False
    preferences: dict[str, Any] = Field(default_factory=dict)


class SettingsView(ApiModel):
    user_id: str
    settings: UserSettings
    updated: datetime | None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _validate(data: Any) -> UserSettings:
    if not isinstance(data, dict):
        raise BadRequest("Settings must be a JSON object.", code="invalid_body")
    try:
        return UserSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"Invalid settings: {problems}.", code="invalid_settings") from None


class UserSettingsService:
    """Read, replace and merge a user's settings."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def get(self, user_id: str) -> UserSettings:
        """The stored settings, or the defaults (an unreadable file also gives the defaults)."""
        return self._read(user_id)[0]

    def view(self, user_id: str) -> tuple[SettingsView, str | None]:
        settings, etag, updated = self._read(user_id)
        return SettingsView(user_id=user_id, settings=settings, updated=updated), etag

    def replace(self, user_id: str, data: Any, if_match: str | None, if_none_match: bool) -> tuple[SettingsView, str]:
        """PUT: validate and store the whole document."""
        return self._write(user_id, _validate(data), if_match, if_none_match)

    def patch(self, user_id: str, patch: Any, if_match: str | None) -> tuple[SettingsView, str]:
        """PATCH: merge into what is stored; guarded by the ETag we read, so concurrent
        PATCHes cannot silently drop each other's changes."""
        current, etag, _ = self._read(user_id)
        merged = merge_patch(current.model_dump(by_alias=True, mode="json"), patch)
        settings = _validate(merged)
        return self._write(user_id, settings, if_match or etag, if_none_match=etag is None and if_match is None)

    def _read(self, user_id: str) -> tuple[UserSettings, str | None, datetime | None]:
        try:
            obj = self.store.get(layout.settings_key(user_id))
        except ObjectNotFound:
            return UserSettings(), None, None
        try:
            return UserSettings.model_validate(json.loads(obj.body)), obj.info.etag, obj.info.last_modified
        except (ValueError, ValidationError):
            return UserSettings(), obj.info.etag, obj.info.last_modified

    def _write(self, user_id: str, settings: UserSettings, if_match: str | None, if_none_match: bool) -> tuple[SettingsView, str]:
        data = settings.model_dump_json(by_alias=True).encode()
        if len(data) > MAX_SETTINGS_BYTES:
            raise BadRequest(f"Settings are limited to {MAX_SETTINGS_BYTES} bytes.", code="settings_too_large")
        try:
            info = self.store.put(
                layout.settings_key(user_id), data, content_type="application/json",
                if_match=if_match, if_none_match=if_none_match,
            )
        except (StoragePreconditionFailed, ObjectNotFound):
            raise PreconditionFailed(
                "The settings changed since you read them (or already exist, with If-None-Match: *). "
                "GET them for the current ETag and retry."
            ) from None
        return SettingsView(user_id=user_id, settings=settings, updated=info.last_modified), info.etag
