"""Mounting a user's skills into a session's sandbox, or saying why the files are copied instead.

Production mounts `users/{userId}/skills/` (s3fs on R2, a bind mount for the embedded store),
with temporary credentials that reach only that prefix when CLOUDFLARE_API_TOKEN is set;
development, and any failure to mount, loads the files instead (`skill_loading`). The outcome
is named: the method, why it fell back, and the files the mount shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from chalicelib.config import Settings
from chalicelib.errors import ServiceUnavailable
from chalicelib.sandbox.base import MOUNT_DIR, MountError, MountSpec, Sandbox, SandboxProvider
from chalicelib.storage import layout
from chalicelib.storage.base import ObjectInfo
from chalicelib.storage.r2_credentials import R2TemporaryCredentials, TemporaryCredentialsError

log = logging.getLogger(__name__)

SetupMethod = Literal["r2_load_dev", "r2_mount", "r2_load_fallback"]
SKILLS_DIR = MOUNT_DIR  # where the agent finds the skills, mounted or copied


@dataclass(frozen=True)
class MountOutcome:
    """How the skills reach the sandbox: `mounted` lists what the mount shows (None: not
    mounted, so setup copies the files), `fallback_reason` why a production setup did not mount."""

    method: SetupMethod
    fallback_reason: str | None = None
    mounted: list[str] | None = None


class SkillMount:
    """Mounts a user's skills prefix into a sandbox, where the settings and the host allow it."""

    def __init__(self, settings: Settings, sandboxes: SandboxProvider) -> None:
        self.settings = settings
        self.sandboxes = sandboxes

    def try_mount(self, sandbox: Sandbox, user_id: str, listing: list[ObjectInfo],
                  previous_method: Callable[[], SetupMethod | None]) -> MountOutcome:
        """Production mounts the user's skills; development (and any failure) loads files.

        `previous_method` tells how the session was set up before (None: it was not), asked
        only when temporary credentials cannot be issued.

        `listing` (the skills prefix, read anyway for the skill index) tells the mount what it
        must show, so verifying it costs one file's lookup, not one per file."""
        if not self.settings.is_production:
            return MountOutcome("r2_load_dev")
        spec = self.spec(user_id)
        if spec is None:
            return MountOutcome("r2_load_fallback", "No storage credentials to give the mount (set R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY).")
        if not self.sandboxes.supports_mount(spec):
            return MountOutcome("r2_load_fallback", "The sandbox host cannot mount storage (no /dev/fuse or s3fs there).")
        try:
            spec = self._scope_credentials(spec, user_id)
        except TemporaryCredentialsError as exc:
            if previous_method() == "r2_mount":
                # Its sandbox may still hold the old mount: loading files would go through it
                # (deleting and rewriting the user's skills in storage). The old mount stays as it is.
                raise ServiceUnavailable(
                    f"The session's storage mount could not be renewed: {exc} Retry POST /setup later, "
                    "or set up a new sessionId.", code="mount_credentials_unavailable") from exc
            log.warning("no temporary credentials for user %s, loading files instead: %s", user_id, exc)
            return MountOutcome("r2_load_fallback", f"Temporary credentials for the mount were not issued: {exc}")
        prefix = layout.skills_prefix(user_id)
        listed = tuple(i.key[len(prefix):] for i in listing if not i.key.endswith(("/", "/" + layout.SKILL_MANIFEST)))
        spec = spec.model_copy(update={"expect": listed})
        try:
            seen = sandbox.mount_bucket(spec)
        except MountError as exc:
            log.warning("mount failed for user %s, loading files instead: %s", user_id, exc)
            return MountOutcome("r2_load_fallback", f"Mounting storage failed: {exc}")
        return MountOutcome("r2_mount", mounted=sorted(p for p in seen if p.startswith(SKILLS_DIR + "/")))

    def _scope_credentials(self, spec: MountSpec, user_id: str) -> MountSpec:
        """With CLOUDFLARE_API_TOKEN, swap the server's R2 keys for temporary ones that reach only
        this user's skills, for one session's lifetime. Never falls back to the server's keys."""
        storage = self.settings.storage
        if spec.kind != "s3" or storage.cloudflare_api_token is None:
            return spec
        if not storage.r2_account_id or storage.access_key_id is None:
            raise TemporaryCredentialsError(
                "CLOUDFLARE_API_TOKEN is set, but R2_ACCOUNT_ID and R2_ACCESS_KEY_ID (the parent token's Access Key ID) "
                "are needed too: set them."
            )
        issuer = R2TemporaryCredentials(
            api_token=storage.cloudflare_api_token, account_id=storage.r2_account_id, bucket=storage.bucket,
            parent_access_key_id=storage.access_key_id.get_secret_value(), base_url=storage.cloudflare_api_base_url,
        )
        issued = issuer.issue([layout.skills_prefix(user_id)], storage.session_lifetime_seconds, "object-read-write")
        return spec.model_copy(update={"access_key_id": issued.access_key_id, "secret_access_key": issued.secret_access_key,
                                       "session_token": issued.session_token})

    def spec(self, user_id: str) -> MountSpec | None:
        """What to mount for the user: their skills prefix (a bind mount for the embedded store)."""
        storage = self.settings.storage
        if storage.backend == "local":
            return MountSpec(kind="bind", source_dir=str((storage.data_dir / layout.skills_prefix(user_id)).resolve()))
        if storage.access_key_id is None or storage.secret_access_key is None:
            return None
        return MountSpec(
            kind="s3",
            bucket=storage.bucket,
            prefix=layout.skills_prefix(user_id),
            endpoint_url=self.settings.sandbox.mount_endpoint_url or storage.endpoint_url,
            region=storage.region,
            access_key_id=storage.access_key_id,
            secret_access_key=storage.secret_access_key,
        )
