"""Choose the storage backend from configuration."""

from __future__ import annotations

from chalicelib.aws import ClientSource
from chalicelib.config import Settings
from chalicelib.errors import Misconfigured
from chalicelib.storage.base import ObjectStore
from chalicelib.storage.local import LocalDirectoryStore
from chalicelib.storage.s3 import S3Store, build_s3_client
from chalicelib.telemetry import tracing


def build_store(settings: Settings, session: ClientSource | None = None) -> ObjectStore:
    """The configured ObjectStore. Production refuses the embedded directory: Lambda's disk
    is discarded with every container, so data written there would be lost."""
    storage = settings.storage
    if storage.backend == "local":
        if settings.is_production:
            raise Misconfigured(
                "The embedded local store cannot be used in production (ENVIRONMENT=production): "
                "Lambda's disk does not persist. Set R2_ACCOUNT_ID (or S3_ENDPOINT_URL), R2_BUCKET, "
                "R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY.",
                code="local_store_in_production",
            )
        store = LocalDirectoryStore(storage.data_dir)
        if tracing.enabled():  # a span per operation, as the S3 adapter's; imported only then
            from chalicelib.telemetry.tracing_store import traced

            return traced(store)
        return store
    return S3Store(build_s3_client(storage, session), storage.bucket)
