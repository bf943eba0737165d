"""GET /health: what this deployment is and what it is configured with (no secrets)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from chalicelib.config import Settings
from chalicelib.services.models import ApiModel
from chalicelib.version import __version__


class Health(ApiModel):
    """The original's fields (status, environment, hasApiKey, hasSandbox, hasR2, timestamp), plus more."""

    status: Literal["healthy"] = "healthy"
    environment: str
    version: str
    storage: str
    bucket: str | None
    has_api_key: bool
    has_anthropic_key: bool
    has_sandbox: bool
    sandbox: str
    has_r2: bool
    offline_model: bool
    timestamp: str
    #: Each whole-sandbox limit (uid, pids, memory, disk, tmp, cpu) and what enforces it here.
    sandbox_limits: dict[str, str] | None = None


def check_health(settings: Settings, sandbox_kind: str, sandbox_limits: dict[str, str] | None = None) -> Health:
    """Describe the running configuration; builds no client and makes no round trip (load
    balancers call it often, cold containers included)."""
    storage_backend = settings.storage.backend
    uses_s3 = storage_backend == "s3"
    return Health(
        environment=settings.environment,
        version=__version__,
        storage=storage_backend,
        bucket=settings.storage.bucket if uses_s3 else None,
        has_api_key=settings.api_key is not None,
        has_anthropic_key=settings.agent.anthropic_api_key is not None,
        has_sandbox=sandbox_kind != "none",
        sandbox=sandbox_kind,
        has_r2=uses_s3 and _is_r2(settings),
        offline_model=settings.agent.offline_model,
        sandbox_limits=sandbox_limits,
        timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )


def _is_r2(settings: Settings) -> bool:
    """Storage is Cloudflare R2 with its API token: an R2 endpoint and both keys. Plain S3, or R2
    without credentials, is not R2 "configured" (the original's hasR2 meant a working binding)."""
    storage = settings.storage
    endpoint = storage.endpoint_url or ""
    r2_endpoint = storage.r2_account_id is not None or ".r2.cloudflarestorage.com" in endpoint
    return r2_endpoint and storage.access_key_id is not None and storage.secret_access_key is not None
