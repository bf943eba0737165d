"""Runtime configuration, read from the environment into one typed, immutable model.

Every setting the product honours is declared here, with its environment variable, so the
README's configuration table and the code cannot drift apart silently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from chalicelib.errors import Misconfigured
from chalicelib.sandbox.egress_policy import normalize_rule

T = TypeVar("T", int, float)

Environment = Literal["development", "production"]
StorageBackend = Literal["local", "s3"]

DEFAULT_BUCKET = "claude-agent-user-data"
DEFAULT_DATA_DIR = "./.data"
# Under `chalice local` the default store lives outside the project: Chalice's autoreloader
# restarts the server on any file written under the project directory, the store's included.
CHALICE_LOCAL_DATA_DIR = "claude-agent-backend/chalice-local"
# The newest generally available Sonnet in the installed anthropic package's Model literal
# (2.17.0, the lock). claude-sonnet-4-5-20250929 (the original's default) reached end of life on
# 2026-11-30, and 2.17 no longer lists it.
DEFAULT_MODEL = "claude-sonnet-5-5"
# What one user message may cost by default (USD): a fresh deployment has a ceiling, not an open
# one (thinking 128k x maxTurns 200 is ~27 M output tokens). MAX_BUDGET_USD raises it; 0 removes it.
DEFAULT_MAX_BUDGET_USD = 5.0


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageSettings(_Frozen):
    """Where user data lives: the embedded directory or an S3 API (R2, moto, AWS)."""

    backend: StorageBackend
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    bucket: str = DEFAULT_BUCKET
    endpoint_url: str | None = None
    region: str = "auto"
    r2_account_id: str | None = None
    # With a Cloudflare API token, sandbox mounts get R2 temporary credentials scoped to one
    # user's skills for one session's lifetime, never the R2 keys below.
    cloudflare_api_token: SecretStr | None = None
    cloudflare_api_base_url: str = "https://api.cloudflare.com/client/v4"
    session_lifetime_seconds: int = Field(default=86_400, ge=60, le=604_800)
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    # Sized so that a hung endpoint costs one storage call at most
    # max_attempts x read_timeout (+ a fraction of a second of backoff): 15.2 s by default,
    # inside API Gateway's 29 s (README, "Storage timeouts").
    connect_timeout: float = Field(default=2.0, gt=0, le=60)
    read_timeout: float = Field(default=5.0, gt=0, le=300)
    max_attempts: int = Field(default=3, ge=1, le=10)


class SandboxSettings(_Frozen):
    """Where sessions run: local bubblewrap sandboxes, or a remote sandbox host."""

    url: str | None = None
    token: SecretStr | None = None
    # Where the sandbox host reaches storage for s3fs, when that differs from the API's endpoint.
    mount_endpoint_url: str | None = None
    root: Path = Path("./.data/sandboxes")
    allow_unisolated: bool = False
    idle_timeout_seconds: int = 600
    # The hard ceiling: past it an idle sandbox is destroyed even when saving it failed (its
    # session keeps the last good snapshot). None: 4 x idle_timeout_seconds.
    max_idle_seconds: int | None = Field(default=None, ge=1)
    command_timeout_seconds: int = 120
    cpu_seconds: int = 300
    memory_mb: int = 2048
    # Whole-sandbox bounds (cgroups where available; see chalicelib/sandbox/cgroups.py).
    pids: int = Field(default=512, ge=8)
    disk_mb: int = Field(default=1024, ge=1)
    tmp_mb: int = Field(default=256, ge=1)
    # Sandbox host only: take no new sessions (its sessions move at their next turn).
    drain: bool = False
    # Network-on sandboxes (chalicelib/sandbox/egress_proxy.py): host-name rules for every user
    # ("pypi.org", "*.example.com"; deny wins, a non-empty allow list must match) and how many
    # proxied connections one sandbox may hold open at once.
    egress_allow: tuple[str, ...] = ()
    egress_deny: tuple[str, ...] = ()
    egress_max_connections: int = Field(default=64, ge=1, le=10_000)
    # Sandbox host only: the largest body its JSON routes read (files travel base64-encoded).
    host_max_body_mb: int = Field(default=40, ge=1, le=1024)

    @field_validator("egress_allow", "egress_deny")
    @classmethod
    def _egress_rules(cls, rules: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_rule(rule) for rule in rules)

    @property
    def max_idle(self) -> int:
        """SANDBOX_MAX_IDLE_SECONDS, or 4 x SANDBOX_IDLE_TIMEOUT; never below the idle timeout."""
        return max(self.max_idle_seconds or 4 * self.idle_timeout_seconds, self.idle_timeout_seconds)

    @property
    def urls(self) -> tuple[str, ...]:
        """SANDBOX_URL as a list: one URL, or a comma-separated fleet of sandbox hosts."""
        return _split(self.url)


class WorkspaceSettings(_Frozen):
    """Durable workspaces: snapshot and upload caps."""

    snapshot_mb: int = Field(default=256, ge=1, le=5 * 1024)
    upload_mb: int = Field(default=25, ge=1, le=1024)

    @property
    def snapshot_bytes(self) -> int:
        return self.snapshot_mb * 1024 * 1024

    @property
    def upload_bytes(self) -> int:
        return self.upload_mb * 1024 * 1024


class AgentSettings(_Frozen):
    """How the agent talks to Claude."""

    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    default_model: str = DEFAULT_MODEL
    default_max_turns: int = 25
    max_tokens: int = 8192
    max_retries: int = 2
    price_table_json: str | None = None
    # Tokens the working context may use before it is compacted; None: the model's own window.
    context_window_tokens: int | None = Field(default=None, ge=4_000)
    # Set by `./scripts/dev --offline-model`: ANTHROPIC_BASE_URL is the local stand-in, not Claude.
    offline_model: bool = False
    # A server-wide ceiling on what one user message may cost (USD); None: only the user's own.
    max_budget_usd: float | None = Field(default=DEFAULT_MAX_BUDGET_USD, gt=0)
    # How long a turn waits for the user to approve a tool call (permissions: ask) before denying it.
    permission_timeout_seconds: float = Field(default=300, gt=0, le=3600)


class AuthSettings(_Frozen):
    """End-user tokens: an OpenID provider's (AUTH_JWT_*) and the service's own (USER_TOKEN_*)."""

    # The provider's issuer, exactly as its tokens' `iss` says; discovery reads
    # {issuer}/.well-known/openid-configuration for the JWKS URL unless AUTH_JWKS_URL is set.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # The claim that is the userId (Cognito, Auth0 and Clerk all put the user in `sub`).
    jwt_user_claim: str = Field(default="sub", min_length=1)
    jwks_url: str | None = None
    # Signs the tokens POST /users/{userId}/tokens mints (HS256, the service's own issuer only).
    user_token_secret: SecretStr | None = None
    user_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)

    @property
    def accepts_user_tokens(self) -> bool:
        return self.jwt_issuer is not None or self.user_token_secret is not None


class QuotaSettings(_Frozen):
    """Per-user limits; None: unlimited (the default). PUT /users/{userId}/limits overrides them."""

    max_sessions: int | None = Field(default=None, ge=1)
    messages_per_minute: int | None = Field(default=None, ge=1)
    daily_budget_usd: float | None = Field(default=None, gt=0)
    storage_mb: int | None = Field(default=None, ge=1)


class Settings(_Frozen):
    """The whole configuration of one process (a Lambda container or the local gateway)."""

    environment: Environment = "development"
    api_key: SecretStr | None = None
    storage: StorageSettings
    sandbox: SandboxSettings = SandboxSettings()
    agent: AgentSettings = AgentSettings()
    workspace: WorkspaceSettings = WorkspaceSettings()
    auth: AuthSettings = AuthSettings()
    quotas: QuotaSettings = QuotaSettings()
    websocket_url: str | None = Field(
        default=None, description="Public ws(s):// URL clients connect to; derived if unset."
    )
    # `chalice local`: REST only, so /setup hands out no websocket URL (see under_chalice_local).
    chalice_local: bool = False
    cors_allow_origins: tuple[str, ...] = ()
    # The local gateway only: proxies whose X-Forwarded-For / -Proto it believes (none: the
    # peer's own address is logged, whatever a client claims).
    trusted_proxies: tuple[str, ...] = ()
    turn_runner_function: str | None = None
    # The local gateway only: how many turns run at once (each holds a worker for its whole turn).
    local_turn_workers: int = Field(default=16, ge=1, le=1024)
    # A running turn reads its session state this often, for interrupts and reconnects: the
    # interrupt latency, and one Class B read per tick while a turn runs.
    turn_poll_seconds: float = Field(default=0.5, ge=0.05, le=3600)
    # A running turn holds a lease in the session state, renewed every third of it (one Class A
    # write each): how long a dead runner can hold a session before another takes over.
    turn_lease_seconds: float = Field(default=10.0, ge=1, le=900)
    # Frames one websocket connection may send per second (a burst of as many is allowed): past
    # it a frame is refused (`frame_rate_exceeded`), and a connection that keeps flooding is closed.
    ws_frames_per_second: int = Field(default=20, ge=1, le=10_000)
    # Websocket connections open at once on one session (tabs, devices): the next is refused (429).
    ws_connections_per_session: int = Field(default=10, ge=1, le=1_000)

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `environ` (default: the process environment).

        Raises Misconfigured with the variable's name when a value cannot be used.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        environment = (get("ENVIRONMENT") or "development").lower()
        if environment not in ("development", "production"):
            raise Misconfigured(
                f"ENVIRONMENT={env.get('ENVIRONMENT')!r} is not valid: "
                "set it to 'development' or 'production'."
            )
        try:
            return cls(
                environment=environment,  # type: ignore[arg-type]
                api_key=get("API_KEY"),
                storage=_storage_settings(get, environment),
                sandbox=SandboxSettings(
                    url=get("SANDBOX_URL"),
                    token=get("SANDBOX_TOKEN"),
                    mount_endpoint_url=get("SANDBOX_MOUNT_ENDPOINT_URL"),
                    root=Path(get("SANDBOX_ROOT") or _data_dir(get) / "sandboxes"),
                    allow_unisolated=_flag(get("SANDBOX_ALLOW_UNISOLATED")),
                    idle_timeout_seconds=_int(get, "SANDBOX_IDLE_TIMEOUT", 600),
                    max_idle_seconds=_int(get, "SANDBOX_MAX_IDLE_SECONDS", 0) or None,
                    command_timeout_seconds=_int(get, "SANDBOX_COMMAND_TIMEOUT", 120),
                    cpu_seconds=_int(get, "SANDBOX_CPU_SECONDS", 300),
                    memory_mb=_int(get, "SANDBOX_MEMORY_MB", 2048),
                    pids=_int(get, "SANDBOX_PIDS", 512),
                    disk_mb=_int(get, "SANDBOX_DISK_MB", 1024),
                    tmp_mb=_int(get, "SANDBOX_TMP_MB", 256),
                    drain=_flag(get("SANDBOX_DRAIN")),
                    egress_allow=_split(get("SANDBOX_EGRESS_ALLOW")),
                    egress_deny=_split(get("SANDBOX_EGRESS_DENY")),
                    egress_max_connections=_int(get, "SANDBOX_EGRESS_MAX_CONNECTIONS", 64),
                    host_max_body_mb=_int(get, "SANDBOX_HOST_MAX_BODY_MB", 40),
                ),
                workspace=WorkspaceSettings(
                    snapshot_mb=_int(get, "WORKSPACE_SNAPSHOT_MB", 256),
                    upload_mb=_int(get, "WORKSPACE_UPLOAD_MB", 25),
                ),
                agent=AgentSettings(
                    anthropic_api_key=get("ANTHROPIC_API_KEY"),
                    anthropic_base_url=get("ANTHROPIC_BASE_URL"),
                    default_model=get("DEFAULT_MODEL") or DEFAULT_MODEL,
                    default_max_turns=_int(get, "DEFAULT_MAX_TURNS", 25),
                    max_tokens=_int(get, "MAX_TOKENS", 8192),
                    max_retries=_int(get, "ANTHROPIC_MAX_RETRIES", 2),
                    price_table_json=get("PRICE_TABLE"),
                    context_window_tokens=_int(get, "CONTEXT_WINDOW_TOKENS", 0) or None,
                    offline_model=_flag(get("OFFLINE_MODEL")),
                    max_budget_usd=_float(get, "MAX_BUDGET_USD", DEFAULT_MAX_BUDGET_USD) or None,
                    permission_timeout_seconds=_float(get, "PERMISSION_TIMEOUT_SECONDS", 300),
                ),
                auth=_auth_settings(get),
                quotas=QuotaSettings(
                    max_sessions=_int(get, "USER_MAX_SESSIONS", 0) or None,
                    messages_per_minute=_int(get, "USER_MESSAGES_PER_MINUTE", 0) or None,
                    daily_budget_usd=_float(get, "USER_DAILY_BUDGET_USD", 0) or None,
                    storage_mb=_int(get, "USER_STORAGE_MB", 0) or None,
                ),
                websocket_url=get("WEBSOCKET_URL"),
                chalice_local=under_chalice_local(get),
                local_turn_workers=_int(get, "LOCAL_TURN_WORKERS", 16),
                cors_allow_origins=_split(get("CORS_ALLOW_ORIGINS"))
                if get("CORS_ALLOW_ORIGINS") is not None
                else _default_origins(get, environment),
                turn_runner_function=get("TURN_RUNNER_FUNCTION"),
                trusted_proxies=_split(get("TRUSTED_PROXIES")),
                turn_poll_seconds=_float(get, "TURN_POLL_SECONDS", 0.5),
                turn_lease_seconds=_float(get, "TURN_LEASE_SECONDS", 10.0),
                ws_frames_per_second=_int(get, "WS_FRAMES_PER_SECOND", 20),
                ws_connections_per_session=_int(get, "WS_CONNECTIONS_PER_SESSION", 10),
            )
        except ValueError as exc:  # int() failures and pydantic's ValidationError
            raise Misconfigured(f"Invalid configuration: {_describe(exc)}") from exc


class _RecordingEnv(Mapping[str, str]):
    """A view of an environment that remembers each name looked up and the value it had."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: dict[str, str | None] = {}

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        value = self.read.setdefault(name, self._env.get(name))
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


_current_lock = threading.Lock()
# (names from_env looked up, their values then, the Settings built from them)
_current: tuple[tuple[str, ...], tuple[str | None, ...], Settings] | None = None


def current_settings() -> Settings:
    """The process's Settings, read from os.environ once and rebuilt only when it changes.

    Every request and websocket event asks for them, and building them is half of /health's
    time, so they are cached. The cache is keyed on the values of exactly the variables
    `Settings.from_env` looked up when it built them (recorded, so a new setting can never be
    left out of the key): secrets loaded into the environment at a cold start, or a test that
    sets a variable, get fresh Settings (and so a fresh Container) on the next call.
    Raises Misconfigured like `Settings.from_env`; a failure is not cached.
    """
    global _current
    cached = _current
    if cached is not None:
        names, values, settings = cached
        if tuple(os.environ.get(n) for n in names) == values:
            return settings
    with _current_lock:
        recorder = _RecordingEnv(os.environ)
        settings = Settings.from_env(recorder)
        _current = (tuple(recorder.read), tuple(recorder.read.values()), settings)
        return settings


def _storage_settings(get, environment: str) -> StorageSettings:  # type: ignore[no-untyped-def]
    explicit = get("STORAGE_BACKEND")
    uses_s3 = any(get(n) for n in ("R2_ACCOUNT_ID", "S3_ENDPOINT_URL", "R2_BUCKET"))
    if explicit is not None and explicit not in ("local", "s3"):
        raise Misconfigured(
            f"STORAGE_BACKEND={explicit!r} is not valid: set it to 'local' or 's3', or unset it."
        )
    backend = explicit or ("s3" if uses_s3 or environment == "production" else "local")
    account = get("R2_ACCOUNT_ID")
    endpoint = get("S3_ENDPOINT_URL") or (
        f"https://{account}.r2.cloudflarestorage.com" if account else None
    )
    return StorageSettings(
        backend=backend,
        data_dir=_data_dir(get),
        bucket=get("R2_BUCKET") or DEFAULT_BUCKET,
        endpoint_url=endpoint,
        region=get("S3_REGION") or ("auto" if account or not get("AWS_REGION") else get("AWS_REGION")),
        r2_account_id=account,
        cloudflare_api_token=get("CLOUDFLARE_API_TOKEN"),
        cloudflare_api_base_url=get("CLOUDFLARE_API_BASE_URL") or "https://api.cloudflare.com/client/v4",
        session_lifetime_seconds=_int(get, "SESSION_LIFETIME_SECONDS", 86_400),
        access_key_id=get("R2_ACCESS_KEY_ID"),
        secret_access_key=get("R2_SECRET_ACCESS_KEY"),
        connect_timeout=_float(get, "STORAGE_CONNECT_TIMEOUT", 2.0),
        read_timeout=_float(get, "STORAGE_READ_TIMEOUT", 5.0),
        max_attempts=_int(get, "STORAGE_MAX_ATTEMPTS", 3),
    )


def under_chalice_local(get) -> bool:  # type: ignore[no-untyped-def]
    """True in Chalice's own development server, `chalice local`, which serves REST only: the
    Chalice CLI marks its runs with AWS_CHALICE_CLI_MODE, and neither the local gateway
    (LOCAL_GATEWAY_URL) nor a Lambda (AWS_LAMBDA_FUNCTION_NAME) is one."""
    return bool(get("AWS_CHALICE_CLI_MODE")) and not get("LOCAL_GATEWAY_URL") and not get("AWS_LAMBDA_FUNCTION_NAME")


def _data_dir(get) -> Path:  # type: ignore[no-untyped-def]
    """DATA_DIR, else ./.data; under `chalice local`, else $XDG_DATA_HOME (~/.local/share)/CHALICE_LOCAL_DATA_DIR."""
    if get("DATA_DIR"):
        return Path(get("DATA_DIR"))
    if under_chalice_local(get):
        home = Path(get("HOME")) if get("HOME") else Path.home()
        return Path(get("XDG_DATA_HOME") or home / ".local/share") / CHALICE_LOCAL_DATA_DIR
    return Path(DEFAULT_DATA_DIR)


def _auth_settings(get) -> AuthSettings:  # type: ignore[no-untyped-def]
    issuer, audience = get("AUTH_JWT_ISSUER"), get("AUTH_JWT_AUDIENCE")
    if issuer is not None and audience is None:
        raise Misconfigured(
            "AUTH_JWT_ISSUER is set but AUTH_JWT_AUDIENCE is not: set it to the audience your identity provider "
            "puts in the tokens it issues for this API (README: End-user tokens)."
        )
    secret = get("USER_TOKEN_SECRET")
    if secret is not None and len(secret) < 32:
        raise Misconfigured(
            "USER_TOKEN_SECRET is shorter than 32 characters: use a random one, e.g. `openssl rand -base64 48`."
        )
    return AuthSettings(
        jwt_issuer=issuer,
        jwt_audience=audience,
        jwt_user_claim=get("AUTH_JWT_USER_CLAIM") or "sub",
        jwks_url=get("AUTH_JWKS_URL"),
        user_token_secret=secret,
        user_token_ttl_seconds=_int(get, "USER_TOKEN_TTL_SECONDS", 900),
    )


def _default_origins(get, environment: str) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    """Browser origins allowed when CORS_ALLOW_ORIGINS is unset (see chalicelib/web/cors.py)."""
    if environment == "production":
        return ()
    if get("API_KEY") is not None:
        return ("*",)
    # Open development: only the console the local gateway serves itself. `localhost` is
    # listed too (a browser cannot be tricked into resolving it elsewhere); a DNS name that
    # merely points at 127.0.0.1 is not, as that is how a rebinding page would get in.
    gateway = (get("LOCAL_GATEWAY_URL") or "").rstrip("/")
    if not gateway:
        return ()
    return (gateway, gateway.replace("://127.0.0.1:", "://localhost:", 1)) if "://127.0.0.1:" in gateway else (gateway,)


def _int(get, name: str, default: int) -> int:  # type: ignore[no-untyped-def]
    return _parsed(get, name, default, int, "a whole number")


def _float(get, name: str, default: float) -> float:  # type: ignore[no-untyped-def]
    return _parsed(get, name, default, float, "a number")


def _parsed(get, name: str, default: T, parse: Callable[[str], T], what: str) -> T:  # type: ignore[no-untyped-def]
    raw = get(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise Misconfigured(f"{name}={raw!r} is not {what}: set it to, say, {default}.") from None


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
    return str(exc)
