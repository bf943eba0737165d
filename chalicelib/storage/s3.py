"""The S3 API backend: Cloudflare R2 in production, any S3-compatible endpoint elsewhere.

R2 rejects the aws-chunked CRC32 trailer that boto3 >= 1.36 sends by default (as NotImplemented,
lately as a misleading Unauthorized), so the client only computes and validates checksums when
an operation requires them. Over plain HTTP botocore sends an ordinary header instead, so tests
against moto never see the failing path: `build_s3_client` is asserted on directly.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from chalicelib.aws import ClientSource, aws_session
from chalicelib.config import StorageSettings
from chalicelib.storage.base import (
    ListPage,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StorageUnavailable,
    StoredObject,
)
from chalicelib.telemetry import tracing

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412"}
_CONFLICT_RETRYABLE = {"ConditionalRequestConflict", "409"}
#: How long storage calls fail at once after one timed out (see FailFast).
FAIL_FAST_SECONDS = 10.0
#: Object metadata naming the conditional write that made an object (see S3Store.put).
WRITE_ID = "write-id"


def client_config(
    max_pool_connections: int = 64, *, connect_timeout: float = 2.0, read_timeout: float = 5.0, max_attempts: int = 3
) -> Config:
    """The botocore Config every S3 client here uses (asserted by a test).

    `max_attempts` counts the first try (botocore's `total_max_attempts`; its `max_attempts`
    would count retries only).
    """
    return Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
    )


def build_s3_client(settings: StorageSettings, session: ClientSource | None = None) -> Any:
    """An S3 client for R2 (R2_ACCOUNT_ID), any endpoint (S3_ENDPOINT_URL) or AWS itself."""
    session = session or aws_session()
    config = client_config(
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout, max_attempts=settings.max_attempts
    )
    kwargs: dict[str, Any] = {"config": config, "region_name": settings.region}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    if settings.access_key_id and settings.secret_access_key:
        kwargs["aws_access_key_id"] = settings.access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
    client = session.client("s3", **kwargs)
    if tracing.enabled():  # a span per storage call (botocore event hooks); imported only then
        from chalicelib.telemetry.tracing_aws import instrument

        instrument(client)
    return client


class FailFast:
    """After a storage call timed out, fail the next ones at once for a while.

    botocore bounds one call (attempts x timeout); this bounds a request: once storage has been
    seen hanging, the request's later calls (and other requests') answer 503 at once instead
    of each waiting out its own timeouts, so a REST call waits for at most one timed-out call.
    Only timeouts trip it: a refused connection or a 5xx already fails fast on its own.
    """

    def __init__(self, seconds: float = FAIL_FAST_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._open_until = 0.0
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise StorageUnavailable while open."""
        with self._lock:
            remaining = self._open_until - self._clock()
        if remaining > 0:
            raise StorageUnavailable(
                "The storage service timed out moments ago; not waiting for it again "
                f"for another {remaining:.0f} s.",
                hint="Check the storage endpoint's health (S3_ENDPOINT_URL / R2_ACCOUNT_ID).",
            )

    def trip(self) -> None:
        with self._lock:
            self._open_until = self._clock() + self.seconds


class S3Store:
    """An ObjectStore on one bucket of an S3-compatible service."""

    backend_name = "s3"

    def __init__(self, client: Any, bucket: str, fail_fast: FailFast | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.fail_fast = fail_fast or FailFast()

    def get(self, key: str) -> StoredObject:
        """Return the object's bytes and info; raise ObjectNotFound."""
        with self._errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"].read()
        info = ObjectInfo(
            key=key, size=len(body), etag=response["ETag"], last_modified=response["LastModified"]
        )
        return StoredObject(
            info=info, body=body, content_type=response.get("ContentType") or "application/octet-stream"
        )

    def head(self, key: str) -> ObjectInfo:
        """Return the object's info; raise ObjectNotFound."""
        with self._errors(key):
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=response["ETag"],
            last_modified=response["LastModified"],
        )

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """PutObject, conditional when asked (S3 answers 412 PreconditionFailed).

        A conditional write carries a fresh write id in its metadata. botocore retries a
        PutObject whose response was lost, and when the first attempt had been applied the
        retry meets its own write and gets 412; the write id tells that apart from a
        concurrent writer, so the caller hears of success, not of a conflict.
        """
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, "ContentType": content_type}
        write_id: str | None = None
        if if_match is not None:
            params["IfMatch"] = if_match
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None or if_none_match:
            write_id = uuid.uuid4().hex
            params["Metadata"] = {WRITE_ID: write_id}
        try:
            with self._errors(key):
                response = self.client.put_object(**params)
        except PreconditionFailed:
            landed = self._written_by(key, write_id) if write_id else None
            if landed is None:
                raise
            return landed
        # PutObject does not return LastModified; the write time is close enough and saves a HEAD.
        return ObjectInfo(key=key, size=len(body), etag=response["ETag"], last_modified=datetime.now(timezone.utc))

    def _written_by(self, key: str, write_id: str) -> ObjectInfo | None:
        """The object's info if the write `write_id` made its current version, else None."""
        try:
            with self._errors(key):
                response = self.client.head_object(Bucket=self.bucket, Key=key)
        except StorageError:
            return None
        if (response.get("Metadata") or {}).get(WRITE_ID) != write_id:
            return None
        return ObjectInfo(
            key=key, size=response["ContentLength"], etag=response["ETag"], last_modified=response["LastModified"]
        )

    def delete(self, key: str) -> None:
        """DeleteObject (free on R2); a missing key is not an error."""
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: list[str]) -> int:
        """DeleteObjects in batches of 1,000 (one request per batch)."""
        deleted = 0
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with self._errors(batch[0] if batch else ""):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageUnavailable(
                    f"Deleting {len(errors)} of {len(batch)} objects failed "
                    f"(first: {first.get('Key')}: {first.get('Code')} {first.get('Message')}).",
                    hint="Retry the request; nothing else was changed.",
                )
            deleted += len(batch)
        return deleted

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = None,
        max_keys: int = 1000,
        continuation_token: str | None = None,
        start_after: str | None = None,
    ) -> ListPage:
        """ListObjectsV2, one page."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max(1, min(max_keys, 1000))}
        if delimiter:
            params["Delimiter"] = delimiter
        if continuation_token:
            params["ContinuationToken"] = continuation_token
        elif start_after:
            params["StartAfter"] = start_after
        with self._errors(prefix):
            response = self.client.list_objects_v2(**params)
        objects = [
            ObjectInfo(key=o["Key"], size=o["Size"], etag=o["ETag"], last_modified=o["LastModified"])
            for o in response.get("Contents", [])
            # s3fs leaves directory markers ("folder/") behind; they are not objects to us.
            if not o["Key"].endswith("/")
        ]
        prefixes = [p["Prefix"] for p in response.get("CommonPrefixes", [])]
        token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return ListPage(objects=objects, prefixes=prefixes, next_token=token)

    def _errors(self, key: str) -> _Translate:
        """A context that fails fast while storage is known to hang, and translates botocore errors."""
        return _Translate(self.fail_fast, key)


class _Translate:
    """Translate botocore errors into the storage errors the services understand."""

    def __init__(self, fail_fast: FailFast, key: str) -> None:
        self.fail_fast = fail_fast
        self.key = key

    def __enter__(self) -> None:
        self.fail_fast.check()
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError)):
            self.fail_fast.trip()
            raise StorageUnavailable(
                f"The storage service did not answer in time ({type(exc).__name__}).",
                hint="Check the storage endpoint's health; STORAGE_READ_TIMEOUT and STORAGE_CONNECT_TIMEOUT set the limits.",
            ) from exc
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
                raise ObjectNotFound(self.key) from None
            if code in _PRECONDITION or status == 412:
                raise PreconditionFailed(self.key, error.get("Message") or "precondition failed") from None
            if code in _CONFLICT_RETRYABLE or status == 409:
                raise PreconditionFailed(self.key, "a concurrent write to the same key won") from None
            if code == "NoSuchBucket":
                raise StorageUnavailable(
                    "The storage bucket does not exist.",
                    hint="Create it with ./scripts/setup-r2.sh or set R2_BUCKET to an existing bucket.",
                ) from exc
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Unauthorized"):
                raise StorageUnavailable(
                    f"The storage service refused our credentials ({code}).",
                    hint="Check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY and the token's bucket permissions.",
                ) from exc
            if code == "NotImplemented":
                raise StorageUnavailable(
                    "The storage service does not implement a request feature (NotImplemented).",
                    hint="This is R2's answer to checksum trailers; the client must use "
                    "request_checksum_calculation='when_required'.",
                ) from exc
            if isinstance(status, int) and status >= 500:
                raise StorageUnavailable(f"The storage service failed ({status} {code}).") from exc
            raise StorageError(f"Storage request failed: {code} {error.get('Message', '')}".strip()) from exc
        if isinstance(exc, (EndpointConnectionError, BotoCoreError)):
            raise StorageUnavailable(
                f"The storage service cannot be reached ({type(exc).__name__}).",
                hint="Check S3_ENDPOINT_URL / R2_ACCOUNT_ID and the network.",
            ) from exc
        return False
