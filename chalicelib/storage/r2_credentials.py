"""Cloudflare R2 temporary credentials: keys scoped to some prefixes of one bucket, for a while.

A sandbox's storage mount gets these instead of the server's own R2 keys, so that what a
sandbox host holds for a session (s3fs's credentials) can reach that user's skills only, and
only until the session's lifetime is over.

    POST {base}/accounts/{account_id}/r2/temp-access-credentials
    Authorization: Bearer <Cloudflare API token>
    {"bucket", "parentAccessKeyId", "permission", "ttlSeconds", "prefixes"}
    -> {"success": true, "result": {"accessKeyId", "secretAccessKey", "sessionToken"}, "errors": [...]}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

DEFAULT_API_BASE_URL = "https://api.cloudflare.com/client/v4"
MAX_TTL_SECONDS = 604_800  # Cloudflare's own limit (7 days)

Permission = Literal["object-read-write", "object-read-only"]


class TemporaryCredentialsError(Exception):
    """Cloudflare did not issue the credentials; the message says why and what to check."""


class TemporaryCredentials(BaseModel):
    """S3 credentials that need the session token on every request."""

    model_config = ConfigDict(frozen=True)

    access_key_id: SecretStr
    secret_access_key: SecretStr
    session_token: SecretStr


class _Request(BaseModel):
    bucket: str
    parentAccessKeyId: str
    permission: Permission
    ttlSeconds: int = Field(ge=1, le=MAX_TTL_SECONDS)
    prefixes: list[str] = Field(min_length=1)


class _Issued(BaseModel):
    model_config = ConfigDict(extra="ignore")

    accessKeyId: str = Field(min_length=1)
    secretAccessKey: str = Field(min_length=1)
    sessionToken: str = Field(min_length=1)


class _CloudflareError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: int | str | None = None
    message: str = ""


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    success: bool = False
    errors: list[_CloudflareError] = []
    result: _Issued | None = None


class R2TemporaryCredentials:
    """Issues R2 temporary credentials with a Cloudflare API token."""

    def __init__(self, *, api_token: SecretStr, account_id: str, bucket: str, parent_access_key_id: str,
                 base_url: str = DEFAULT_API_BASE_URL, timeout_seconds: float = 10.0) -> None:
        self.api_token = api_token
        self.account_id = account_id
        self.bucket = bucket
        self.parent_access_key_id = parent_access_key_id
        self.url = f"{base_url.rstrip('/')}/accounts/{account_id}/r2/temp-access-credentials"
        self.timeout_seconds = timeout_seconds

    def issue(self, prefixes: list[str], ttl_seconds: int, permission: Permission = "object-read-write") -> TemporaryCredentials:
        """Credentials for `prefixes` of the bucket, valid `ttl_seconds` (capped at Cloudflare's 7 days).

        Raise TemporaryCredentialsError when Cloudflare cannot be reached or refuses.
        """
        body = _Request(bucket=self.bucket, parentAccessKeyId=self.parent_access_key_id, permission=permission,
                        ttlSeconds=min(max(ttl_seconds, 1), MAX_TTL_SECONDS), prefixes=prefixes)
        # Imported here: every REST cold start imports this module, and only a mounting setup needs httpx.
        import httpx

        try:
            response = httpx.post(self.url, json=body.model_dump(), timeout=self.timeout_seconds,
                                  headers={"Authorization": f"Bearer {self.api_token.get_secret_value()}"})
        except httpx.HTTPError as exc:
            raise TemporaryCredentialsError(f"Cloudflare's API could not be reached ({type(exc).__name__}: {exc}).") from exc
        try:
            answer = _Answer.model_validate_json(response.content)
        except ValidationError:
            answer = _Answer()
        if response.status_code != 200 or not answer.success or answer.result is None:
            reasons = "; ".join(f"{e.code}: {e.message}" for e in answer.errors) or response.text[:300]
            raise TemporaryCredentialsError(
                f"Cloudflare refused temporary credentials (HTTP {response.status_code}: {reasons}). Check that "
                "CLOUDFLARE_API_TOKEN is the value of the R2 API token whose Access Key ID is R2_ACCESS_KEY_ID, that "
                "it has Object Read & Write on the bucket, and that R2_ACCOUNT_ID is its account."
            )
        issued = answer.result
        return TemporaryCredentials(access_key_id=SecretStr(issued.accessKeyId),
                                    secret_access_key=SecretStr(issued.secretAccessKey),
                                    session_token=SecretStr(issued.sessionToken))
