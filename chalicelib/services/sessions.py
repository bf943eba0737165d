"""Sessions: POST /setup prepares a sandbox holding the user's skills; DELETE /sandbox ends it.

Setup is on the critical path of every conversation, so its storage round trips are counted:
one parallel batch (session record, user settings, skills listing, skills bundle, and the
skills catalog in a process that has not seen the user), then one parallel batch (the session
record write, and any skill file the bundle could not serve), whatever the number of skills.
Only when the bundle or the catalog was behind the files does a further request rewrite it
(see `skill_bundle`, `skill_catalog`). A session without a record (new, or destroyed) is
claimed for its user as soon as its record was read (`session_owners`: one conditional write,
while the skills listing is still being read; its erasure marker joins the second batch), and
its sandbox is made then too.

How the skills reach the sandbox is `skill_mount` (a named `MountOutcome`); reading them, their
descriptions and the derived copies' repair is `skill_loading` (a `SkillFiles`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from chalicelib.config import Settings
from chalicelib.errors import AppError, Conflict, NotFound, ServiceUnavailable
from chalicelib.ids import validate_id
from chalicelib.sandbox.archive import has_content
from chalicelib.sandbox.base import (
    Placement,
    Sandbox,
    SandboxError,
    SandboxGone,
    SandboxOptions,
    SandboxProvider,
    SandboxUnavailable,
)
from chalicelib.services.models import ApiModel
from chalicelib.services.quotas import QuotasService
from chalicelib.services.session_owners import SessionOwners, owned_by_another_user, owner_key
from chalicelib.services.session_records import SessionRecord, SessionRecords
from chalicelib.services.skill_catalog import SkillCatalog
from chalicelib.services.skill_index import build_index
from chalicelib.services.skill_loading import SkillLoader
from chalicelib.services.skill_mount import SetupMethod, SkillMount
from chalicelib.services.user_settings import NetworkRules
from chalicelib.services.workspace_snapshots import WorkspaceSnapshots, snapshot_prefix
from chalicelib.storage import ObjectNotFound, ObjectStore, layout
from chalicelib.storage.cache import BodyCache
from chalicelib.storage.listing import iter_all

log = logging.getLogger(__name__)



CHALICE_LOCAL_SETUP = ("Sandbox prepared, but this server is `chalice local`, which serves the REST API only and no "
                       "WebSocket (websocketUrl is null). To talk to the agent, run ./scripts/dev: REST and the "
                       "WebSocket on one port, with the same settings.")


class SetupResult(ApiModel):
    """The original's setup body, plus the websocket URL, its token and any fallback reason."""

    status: Literal["ready"] = "ready"
    session_id: str
    user_id: str
    setup_method: SetupMethod
    skills_loaded: list[str]
    message: str
    # None where this server cannot serve the agent websocket (`chalice local`): the message says where to go.
    websocket_url: str | None
    token: str
    fallback_reason: str | None = None
    # Set when the workspace's snapshot could not be restored: the sandbox starts empty, and the
    # snapshot is kept apart (GET /sessions/{sessionId}/files?snapshot=unrestored).
    workspace_not_restored: str | None = None


@dataclass(frozen=True)
class Restored:
    """The sandbox a session goes on with after a restore, and why its workspace is empty, if it is."""

    sandbox: Sandbox
    not_restored: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A session made ready for its skills: its sandbox, whether setup claimed the id for the user
    (its erasure marker is then written with the record), whether it took a live-sessions slot,
    and why the workspace was not restored (None: it was, or there was nothing to restore)."""

    sandbox: Sandbox
    claimed: bool
    reserved: bool
    not_restored: str | None


@dataclass(frozen=True)
class Reloaded:
    """What reloading a vanished sandbox did: the skills it loaded, and a restore that failed."""

    skills: list[str]
    not_restored: str | None = None
    # Why the sandbox's last files were not saved before it went (its session goes on from the last snapshot).
    lost_save: str | None = None


class Destroyed(ApiModel):
    status: Literal["destroyed"] = "destroyed"
    session_id: str


class _AllowNetwork(BaseModel):
    """The user settings the sandbox needs; read leniently so setup never fails on them."""

    model_config = ConfigDict(extra="ignore")
    allowNetwork: StrictBool = False  # "yes" or 1 written behind the API must not open the network
    network: NetworkRules | None = None


class SessionsService:
    """Creates, refreshes and destroys sessions (a sandbox plus its record in storage)."""

    def __init__(self, settings: Settings, store: ObjectStore, sandboxes: SandboxProvider, cache: BodyCache | None = None,
                 snapshots: WorkspaceSnapshots | None = None, quotas: QuotasService | None = None,
                 catalog: SkillCatalog | None = None) -> None:
        self.settings = settings
        self.quotas = quotas
        self.snapshots = snapshots
        self.store = store
        self.sandboxes = sandboxes
        # Shared with the skills service: what an upload wrote and described, setup need not
        # read or describe again.
        self.skills = SkillLoader(store, cache or BodyCache(), catalog or SkillCatalog(store))
        self.mount = SkillMount(settings, sandboxes)
        self.records = SessionRecords(store)
        # Sandboxes the local reaper destroyed though their workspace could not be saved, and why:
        # in this process only, since storage was failing when it happened (./scripts/dev's reaper).
        self._lost_saves: dict[str, str] = {}
        self._lost_lock = threading.Lock()
        self.owners = SessionOwners(store)

    # -- setup ---------------------------------------------------------------------------

    def setup(self, session_id: str, user_id: str | None, websocket_base: str | None) -> SetupResult:
        """Prepare (or refresh) the session's sandbox with the user's skills.

        Idempotent: a second call reuses the sandbox, reloads the skills and issues a new token.
        """
        validate_id(session_id, "sessionId")
        validate_id(user_id, "userId")
        assert user_id is not None

        with ThreadPoolExecutor(max_workers=6) as pool:
            # warms the cache reserve_session reads
            limits_f = pool.submit(self.quotas.limits, user_id) if self.quotas is not None else None
            record_f = pool.submit(self.records.read, session_id)
            options_f = pool.submit(self._sandbox_options, user_id)
            listing_f = pool.submit(iter_all, self.store, layout.skills_prefix(user_id))
            bundle_f = pool.submit(self.skills.bundle.load, user_id)
            # A process that has described this user's skills before checks them by ETag alone.
            catalog_f = None if self.skills.catalog.knows(user_id) else pool.submit(self.skills.catalog.load, user_id)
            found = record_f.result()
            # A record that did not parse was set aside (a str): set up afresh, workspace restored.
            existing = None if isinstance(found, str) else found
            options = options_f.result()
            if limits_f is not None:
                limits_f.result()
            # The claim, the sandbox and its restore need the record, not the skills: they go on
            # while the skills listing (the longest read, for a user with many skills) is read.
            prepared = self._prepare(session_id, user_id, found, options)
            sandbox = prepared.sandbox
            listing = listing_f.result()
            bundle = bundle_f.result()
            catalog = catalog_f.result() if catalog_f is not None else None
        mount = self.mount.try_mount(sandbox, user_id, listing, lambda: self._previous_method(session_id))
        skill_files = self.skills.read(user_id, listing, bundle, mains_only=mount.mounted is not None)
        described, catalog_update = self.skills.describe(user_id, listing, catalog, skill_files.bodies)

        token = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        record = SessionRecord(
            session_id=session_id,
            user_id=user_id,
            token_sha256=_sha256(token),
            sandbox_kind=self.sandboxes.kind,
            setup_method=mount.method,
            created_at=existing[0].created_at if existing else now,
            last_active_at=now,
            skill_index=build_index(skill_files.files, described),
            sandbox_host=_host(sandbox),
            quota_slot=prepared.reserved or (existing is not None and existing[0].quota_slot),
        )
        with ThreadPoolExecutor(max_workers=3) as pool:
            save_f = pool.submit(self.records.save, record, existing[1] if existing else None)
            if catalog_update is not None:
                pool.submit(catalog_update)  # opportunistic, like the bundle's repair
            marked_f = pool.submit(self.owners.mark, session_id, user_id) if prepared.claimed else None
            if mount.mounted is None:
                loaded_f = pool.submit(self.skills.write, sandbox, user_id, listing, bundle, skill_files)
            elif skill_files.bundle_stale:
                # The mount serves the files, but the bundle is behind (files written straight to the
                # bucket): bring it up to date, so the next setup in any container reads one object.
                pool.submit(self.skills.bundle.repair, user_id, listing, skill_files.bodies, bundle)
            save_f.result()
            if marked_f is not None:
                marked_f.result()
            loaded = mount.mounted if mount.mounted is not None else loaded_f.result()

        ws = f"{websocket_base}?sessionId={session_id}" if websocket_base else None
        return SetupResult(
            session_id=session_id,
            user_id=user_id,
            setup_method=mount.method,
            skills_loaded=loaded,
            message=f"Sandbox prepared. Connect via WebSocket to {ws}&token=<token>" if ws else CHALICE_LOCAL_SETUP,
            websocket_url=ws,
            token=token,
            fallback_reason=mount.fallback_reason,
            workspace_not_restored=prepared.not_restored,
        )

    def _prepare(self, session_id: str, user_id: str, found: tuple[SessionRecord, str] | str | None,
                 options: SandboxOptions) -> Prepared:
        """Claim the session for its user, take its quota slot, make its sandbox and restore its
        workspace."""
        existing = None if isinstance(found, str) else found
        if existing is not None and existing[0].user_id != user_id:
            raise owned_by_another_user(session_id)
        # A session without a record may still be another user's (destroyed while its turn
        # winds down, or kept as a snapshot): the ownership claim decides.
        claimed = existing is None and self.owners.claim(session_id, user_id)

        reserved = self.quotas is not None and self.quotas.reserve_session(user_id, session_id, self._is_live)
        try:
            # The record just read says where the session runs: the fleet need not read it again
            # (a storage round trip on setup's critical path).
            sandbox = self._create_sandbox(session_id, options, Placement(existing[0].sandbox_host if existing else None))
        except Exception:
            if reserved and self.quotas is not None:
                self.quotas.release_session(user_id, session_id)
            raise
        if reserved and self.quotas is not None:
            self.quotas.confirm_session(user_id, session_id)
        not_restored = None
        if existing is not None or isinstance(found, str) or not claimed:
            # A record there, one set aside as unreadable, or none but the session already this
            # user's (DELETE /sandbox keeps the claim and the snapshot): the workspace may have a
            # snapshot. A session claimed just now has none (its owner's key was never written).
            restored = self._restore_if_new(session_id, user_id, sandbox, options)
            sandbox, not_restored = restored.sandbox, restored.not_restored
        return Prepared(sandbox, claimed, reserved, not_restored)

    def reload_skills(self, session_id: str, user_id: str) -> Reloaded:
        """Recreate a sandbox that went away (reaped, host restarted) and load the skills again.

        This is the per-request fallback path: it never mounts, so it works on any host. The
        workspace comes back from its latest snapshot before the skills are loaded, and a
        session that moved to another host of the fleet has its record updated. A session
        destroyed meanwhile (DELETE /sandbox, its record gone) is not made again behind the
        delete: Conflict `session_destroyed` ends the turn that asked.
        """
        record = self.find_record(session_id)
        if record is None or record.user_id != user_id:
            raise Conflict(
                f"Session {session_id!r} was destroyed (DELETE /sandbox) while this turn ran, so the turn stopped. "
                f"POST /setup/{session_id} to start it again.",
                code="session_destroyed",
            )
        with ThreadPoolExecutor(max_workers=3) as pool:
            options_f = pool.submit(self._sandbox_options, user_id)
            listing_f = pool.submit(iter_all, self.store, layout.skills_prefix(user_id))
            bundle_f = pool.submit(self.skills.bundle.load, user_id)
            options = options_f.result()
            sandbox = self._create_sandbox(session_id, options, Placement(record.sandbox_host))
            self._note_host(session_id, sandbox)
            restored = self._restore(session_id, user_id, sandbox, options)
            listing, bundle = listing_f.result(), bundle_f.result()
            files = self.skills.read(user_id, listing, bundle)
            with self._lost_lock:
                lost = self._lost_saves.pop(session_id, None)
            return Reloaded(self.skills.write(restored.sandbox, user_id, listing, bundle, files), restored.not_restored, lost)

    def remember_lost_save(self, session_id: str, reason: str) -> None:
        """A sandbox was destroyed without its last save (the reaper's ceiling): its next turn says so."""
        with self._lost_lock:
            self._lost_saves[session_id] = reason

    # -- lookups used by the websocket layer ---------------------------------------------

    def get_record(self, session_id: str) -> SessionRecord:
        """The session's record; NotFound if /setup never created it."""
        validate_id(session_id, "sessionId")
        found = self.records.read(session_id)
        if isinstance(found, str):
            raise NotFound(
                f"Session {session_id!r} had an unreadable record; it was set aside as {found}. Call POST "
                f"/setup/{session_id}?userId=... again for a new token: the conversation and workspace are kept.",
                code="session_repaired",
            )
        if found is None:
            raise NotFound(
                f"Session {session_id!r} does not exist: call POST /setup/{session_id}?userId=... first.",
                code="session_not_found",
            )
        return found[0]

    @staticmethod
    def token_matches(record: SessionRecord, token: str | None) -> bool:
        """Constant-time check of a connection token against the record."""
        if not token:
            return False
        return hmac.compare_digest(_sha256(token), record.token_sha256)

    def sandbox_for(self, session_id: str) -> Sandbox:
        """The live sandbox of a session; raise SandboxGone when it is not there."""
        return self.sandboxes.get(session_id)

    def find_record(self, session_id: str) -> SessionRecord | None:
        """The session's record, or None (never set up, or destroyed)."""
        validate_id(session_id, "sessionId")
        found = self.records.load(session_id)
        return found[0] if found is not None else None

    def _is_live(self, session_id: str) -> bool:
        """Whether the session's sandbox runs (for the live-sessions quota); a host that cannot
        be asked counts as live, so an outage never frees slots."""
        try:
            self.sandboxes.get(session_id)
        except SandboxGone:
            return False
        except SandboxError:
            return True
        return True

    def owner_of(self, session_id: str) -> str | None:
        """The user a session belongs to: its ownership claim's, else (a session set up before
        claims existed) its record's or its workspace snapshot's; None when nothing of it remains."""
        validate_id(session_id, "sessionId")
        claimed = self.owners.owner(session_id)
        if claimed is not None:
            return claimed
        record = self.find_record(session_id)
        if record is not None:
            return record.user_id
        return self.snapshots.last_owner(session_id) if self.snapshots is not None else None

    def host_of(self, session_id: str) -> str | None:
        """The sandbox host the session's record names (the fleet routes by it)."""
        record = self.find_record(session_id)
        return record.sandbox_host if record is not None else None

    # -- destroy -------------------------------------------------------------------------

    def destroy(self, session_id: str) -> Destroyed:
        """Destroy the sandbox and delete the session's records; 404 if there was neither."""
        validate_id(session_id, "sessionId")
        record = self.find_record(session_id)
        self._save_workspace_of(session_id, record)
        # The records go first: a turn still running finds its sandbox gone only after its
        # record is, so it is refused a new one (`session_destroyed`) instead of recreating it
        # behind the delete. The workspace snapshot stays (the files API reads it) until the
        # bucket's session expiry or DELETE /users/{userId} removes it; so does the ownership claim.
        keep = snapshot_prefix(session_id)
        claim = owner_key(session_id)
        keys = [o.key for o in iter_all(self.store, layout.session_prefix(session_id))
                if not o.key.startswith(keep) and o.key != claim]
        if keys:
            self.store.delete_many(keys)
        try:
            had_sandbox = self.sandboxes.destroy(session_id)
        except SandboxUnavailable as exc:
            raise ServiceUnavailable(f"The sandbox host cannot be reached: {exc}", code="sandbox_unavailable") from exc
        if not had_sandbox and not keys:
            raise NotFound(f"Session {session_id!r} not found.", code="session_not_found")
        if record is not None and record.quota_slot and self.quotas is not None:
            self.quotas.release_session(record.user_id, session_id)
        return Destroyed(session_id=session_id)

    # -- internals -----------------------------------------------------------------------

    def save_workspace(self, session_id: str) -> bool:
        """Save the live sandbox's workspace now (before it is destroyed or reaped); False when
        nothing was saved (no sandbox, no record, or the sandbox or the cap refused). A storage
        outage raises StorageUnavailable, so a reaper can keep the sandbox until it passes."""
        if self.snapshots is None:
            return False
        return self._save_workspace_of(session_id, self.find_record(session_id))

    def _save_workspace_of(self, session_id: str, record: SessionRecord | None) -> bool:
        if self.snapshots is None:
            return False
        try:
            sandbox = self.sandboxes.get(session_id)
        except SandboxError:
            return False  # nothing live to save; the last snapshot stands
        if record is None:
            return False
        try:
            self.snapshots.save(session_id, record.user_id, sandbox)
        except (AppError, SandboxError) as exc:
            # The session ends anyway (asked for, or idle), and the last snapshot stands.
            log.warning("workspace of session %s not saved before destroy: %s", session_id, exc)
            return False
        return True

    def _restore_if_new(self, session_id: str, user_id: str, sandbox: Sandbox, options: SandboxOptions) -> Restored:
        """A setup that had to make the sandbox again gets the workspace back from its snapshot."""
        if self.snapshots is None:
            return Restored(sandbox)
        try:
            if has_content(sandbox.workspace_entries()):
                return Restored(sandbox)  # the sandbox lived on: its files are newer than any snapshot
        except SandboxError as exc:
            raise ServiceUnavailable(f"The sandbox could not list its workspace: {exc}", code="sandbox_failed") from exc
        return self._restore(session_id, user_id, sandbox, options)

    def _restore(self, session_id: str, user_id: str, sandbox: Sandbox, options: SandboxOptions) -> Restored:
        """Put the latest snapshot into a new sandbox.

        A snapshot the sandbox refuses (it does not fit SANDBOX_DISK_MB, it is damaged) must not
        brick the session: it is set aside, where no save can replace it and the files API still
        reads it, and the session goes on in a fresh, empty sandbox (a half-restored one must not
        live on). Only a host that cannot be reached is an error, which the next attempt retries.
        """
        if self.snapshots is None:
            return Restored(sandbox)
        try:
            self.snapshots.restore(session_id, user_id, sandbox)
            return Restored(sandbox)
        except (SandboxUnavailable, SandboxGone) as exc:
            self._drop_sandbox(session_id)
            raise ServiceUnavailable(
                f"Restoring the workspace from its snapshot failed: {exc}. Retry; the snapshot is kept.",
                code="workspace_restore_failed",
            ) from exc
        except SandboxError as exc:
            reason = str(exc)
        log.warning("workspace snapshot of session %s not restored, set aside: %s", session_id, reason)
        self._drop_sandbox(session_id)
        fresh = self._create_sandbox(session_id, options)
        self.snapshots.set_aside(session_id, user_id)
        return Restored(fresh, (
            f"The workspace's snapshot could not be restored ({reason}); this session starts with an empty "
            f"workspace. The snapshot is kept apart: GET /sessions/{session_id}/files?snapshot=unrestored lists it, "
            "and files/content?snapshot=unrestored reads or deletes its files."))

    def _drop_sandbox(self, session_id: str) -> None:
        try:
            self.sandboxes.destroy(session_id)
        except SandboxError as gone:
            log.warning("sandbox of session %s not destroyed after a failed restore: %s", session_id, gone)

    def _note_host(self, session_id: str, sandbox: Sandbox) -> None:
        """Record a new host after a move, so every process routes the session there."""
        host = _host(sandbox)
        if host is not None:
            self.records.note_host(session_id, host)

    def _previous_method(self, session_id: str) -> SetupMethod | None:
        """How the session was set up before (None: it was not, or its record is unreadable)."""
        found = self.records.load(session_id)
        return found[0].setup_method if found is not None else None

    def _sandbox_options(self, user_id: str) -> SandboxOptions:
        try:
            raw = self.store.get(layout.settings_key(user_id)).body
            wanted = _AllowNetwork.model_validate_json(raw)
        except (ObjectNotFound, ValidationError):
            # Unreadable settings open nothing: neither the network nor a rule.
            return SandboxOptions(allow_network=False)
        rules = wanted.network or NetworkRules()
        return SandboxOptions(allow_network=wanted.allowNetwork, network_allow=tuple(rules.allow),
                              network_deny=tuple(rules.deny))

    def _create_sandbox(self, session_id: str, options: SandboxOptions, placement: Placement | None = None) -> Sandbox:
        try:
            return self.sandboxes.create(session_id, options, placement)
        except SandboxUnavailable as exc:
            raise ServiceUnavailable(f"The sandbox host cannot be reached: {exc}", code="sandbox_unavailable") from exc
        except SandboxError as exc:
            raise ServiceUnavailable(f"The sandbox could not be created: {exc}", code="sandbox_failed") from exc



def _host(sandbox: Sandbox) -> str | None:
    host = getattr(sandbox, "host", None)
    return host if isinstance(host, str) else None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
