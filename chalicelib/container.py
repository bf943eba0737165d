"""The composition root: builds adapters and services from Settings, once per configuration.

A Lambda container (or the local gateway) keeps one Container per distinct Settings, so
clients, pools and sandboxes survive across requests, while tests that change the environment
get fresh wiring automatically.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from chalicelib.aws import aws_session
from chalicelib.config import Settings
from chalicelib.storage import ObjectStore
from chalicelib.storage.factory import build_store

if TYPE_CHECKING:
    # Each part is imported where it is built, so a cold start pays only for what its first
    # request uses. The agent pulls in the anthropic SDK (three quarters of the old cold import)
    # and only the turn runner needs it; the REST Lambda never uses the realtime package; and
    # a skills request need not build the sessions' and workspace files' models.
    from chalicelib.agent.turn import AgentTurn
    from chalicelib.identity.user_tokens import UserTokens
    from chalicelib.realtime.dispatch import BackgroundInvoker, TurnDispatcher
    from chalicelib.realtime.engineio_links import EngineIOLinks
    from chalicelib.realtime.runner import TurnRunner
    from chalicelib.realtime.sender import Sender
    from chalicelib.realtime.service import RealtimeService
    from chalicelib.sandbox.base import SandboxProvider
    from chalicelib.services.conversations import ConversationsService
    from chalicelib.services.quotas import QuotasService
    from chalicelib.services.sessions import SessionsService
    from chalicelib.services.skills import SkillsService
    from chalicelib.services.usage import UsageService
    from chalicelib.services.user_settings import UserSettingsService
    from chalicelib.services.users import UsersService
    from chalicelib.services.workspace_files import WorkspaceFilesService
    from chalicelib.services.workspace_snapshots import WorkspaceSnapshots
    from chalicelib.storage.cache import BodyCache

T = TypeVar("T")


class Container:
    """Lazily built adapters and services for one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()  # builders ask for other parts
        self._built: dict[str, Any] = {}

    def override(self, name: str, value: Any) -> None:
        """Replace a part (tests swap the turn dispatcher for a thread)."""
        with self._lock:
            self._built[name] = value

    def _once(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]  # type: ignore[no-any-return]

    # -- adapters ------------------------------------------------------------------------

    @property
    def store(self) -> ObjectStore:
        return self._once("store", lambda: build_store(self.settings))

    @property
    def sandboxes(self) -> SandboxProvider:
        from chalicelib.sandbox.factory import build_sandbox_provider

        # Resolved lazily: the fleet asks the session record where a session was placed.
        return self._once("sandboxes", lambda: build_sandbox_provider(self.settings, lambda sid: self.sessions.host_of(sid)))

    @property
    def sandbox_kind(self) -> str:
        """What runs sessions here, for /health; never raises."""
        if self.settings.sandbox.url and "sandboxes" not in self._built:
            # Building the remote client (importing httpx, a TLS context) was a third of the REST
            # Lambda's first requests: /health names it without building it.
            return "remote"  # RemoteSandboxProvider.kind, which build_sandbox_provider picks for a URL
        try:
            return self.sandboxes.kind
        except Exception:  # noqa: BLE001 - health must answer even when sandboxes cannot start
            return "unavailable"

    @property
    def sandbox_limits(self) -> dict[str, str] | None:
        """Which whole-sandbox limits are enforced and how, for /health; never raises.

        A remote host's limits are on its own /health: the API does not build a client to ask."""
        if self.settings.sandbox.url and "sandboxes" not in self._built:
            return None
        try:
            return self.sandboxes.limits()
        except Exception:  # noqa: BLE001 - health must answer even when sandboxes cannot start
            return None

    @property
    def user_tokens(self) -> UserTokens:
        """End-user token verification (its JWKS cache lives as long as this container)."""
        from chalicelib.identity.user_tokens import UserTokens

        return self._once("user_tokens", lambda: UserTokens(self.settings.auth))

    # -- services ------------------------------------------------------------------------

    @property
    def skills(self) -> SkillsService:
        from chalicelib.services.skills import SkillsService

        return self._once("skills", lambda: SkillsService(self.store, cache=self.skill_bodies))

    @property
    def skill_bodies(self) -> BodyCache:
        """Skill file bodies by key and ETag, shared by uploads and setup within this process."""
        from chalicelib.storage.cache import BodyCache

        return self._once("skill_bodies", BodyCache)

    @property
    def conversations(self) -> ConversationsService:
        from chalicelib.services.conversations import ConversationsService

        return self._once("conversations", lambda: ConversationsService(self.store))

    @property
    def user_settings(self) -> UserSettingsService:
        from chalicelib.services.user_settings import UserSettingsService

        return self._once("user_settings", lambda: UserSettingsService(self.store))

    @property
    def users(self) -> UsersService:
        from chalicelib.services.users import UsersService

        return self._once("users", lambda: UsersService(self.store, self.workspace_snapshots))

    @property
    def usage(self) -> UsageService:
        from chalicelib.services.usage import UsageService

        return self._once("usage", lambda: UsageService(self.store))

    @property
    def quotas(self) -> QuotasService:
        from chalicelib.services.quotas import QuotasService

        return self._once("quotas", lambda: QuotasService(self.settings.quotas, self.store))

    @property
    def sessions(self) -> SessionsService:
        from chalicelib.services.sessions import SessionsService

        return self._once("sessions", lambda: SessionsService(self.settings, self.store, self.sandboxes,
                                                              cache=self.skill_bodies, snapshots=self.workspace_snapshots,
                                                              quotas=self.quotas, catalog=self.skills.catalog))

    @property
    def workspace_snapshots(self) -> WorkspaceSnapshots:
        from chalicelib.services.workspace_snapshots import WorkspaceSnapshots

        return self._once("workspace_snapshots", lambda: WorkspaceSnapshots(self.settings, self.store))

    @property
    def workspace_files(self) -> WorkspaceFilesService:
        from chalicelib.services.workspace_files import WorkspaceFilesService

        return self._once("workspace_files", lambda: WorkspaceFilesService(
            self.settings, self.sessions, self.workspace_snapshots,
            check_storage=lambda owner, adding: self.quotas.check_storage(owner, adding, self.usage.storage_bytes)))

    # -- the agent over websocket ----------------------------------------------------------

    @property
    def dispatcher(self) -> TurnDispatcher:
        from chalicelib.realtime.dispatch import LambdaDispatcher

        def build() -> TurnDispatcher:
            function = self.settings.turn_runner_function or "turn_runner"
            return LambdaDispatcher(aws_session().client("lambda"), function)

        return self._once("dispatcher", build)

    @property
    def background(self) -> BackgroundInvoker:
        """The turn runner Lambda for work a websocket handler must not wait for."""
        from chalicelib.realtime.dispatch import LambdaInvoker

        return self._once("background", lambda: LambdaInvoker(
            aws_session().client("lambda"), self.settings.turn_runner_function or "turn_runner"))

    @property
    def engineio_links(self) -> EngineIOLinks:
        from chalicelib.realtime.engineio_links import EngineIOLinks

        return self._once("engineio_links", lambda: EngineIOLinks(self.store))

    @property
    def realtime(self) -> RealtimeService:
        from chalicelib.realtime.connections import ConnectionRegistry
        from chalicelib.realtime.event_log import EventLog
        from chalicelib.realtime.service import RealtimeService
        from chalicelib.realtime.state import StateStore

        return self._once("realtime", lambda: RealtimeService(
            self.settings, self.sessions, self.conversations, StateStore(self.store), EventLog(self.store),
            ConnectionRegistry(self.store), self.dispatcher, quotas=self.quotas, usage=self.usage,
        ))

    @property
    def agent_turn(self) -> AgentTurn:
        from chalicelib.agent.turn import AgentTurn

        return self._once("agent_turn", lambda: AgentTurn(self.settings, self.user_settings, usage=self.usage,
                                                          quotas=self.quotas))

    def turn_runner(self, sender: Sender) -> TurnRunner:
        """A runner sending through `sender` (the app's websocket API)."""
        from chalicelib.realtime.event_log import EventLog
        from chalicelib.realtime.runner import TurnRunner
        from chalicelib.realtime.state import StateStore

        return TurnRunner(self.settings, StateStore(self.store), EventLog(self.store), self.sessions,
                          self.conversations, sender, self.agent_turn, poll_interval=self.settings.turn_poll_seconds,
                          snapshots=self.workspace_snapshots, read_settings=self.user_settings.get)


@functools.lru_cache(maxsize=8)
def get_container(settings: Settings) -> Container:
    """The Container for `settings` (cached: Settings is frozen and hashable)."""
    return Container(settings)
