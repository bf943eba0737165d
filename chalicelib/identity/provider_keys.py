"""The identity provider's signing keys: found by OIDC discovery, cached, refetched for rotation.

A token naming a key id (`kid`) the cache lacks makes us fetch the JWKS again, but at most once
a minute: a flood of tokens with made-up key ids costs the provider one request a minute, not
one per token. The whole set is also refreshed lazily once it is an hour old, so a key the
provider withdrew stops being accepted without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from chalicelib.errors import ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)

REFETCH_INTERVAL_SECONDS = 60.0
MAX_AGE_SECONDS = 3600.0
FETCH_TIMEOUT_SECONDS = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024

Fetch = Callable[[str], Any]


class UnknownSigningKey(Unauthorized):
    code = "invalid_token"


@dataclass(frozen=True)
class SigningKey:
    """One published public key, and the algorithm its JWK pins (None: not pinned)."""

    key: Any
    alg: str | None


def fetch_json(url: str) -> Any:
    """GET `url` as JSON (no redirects, bounded in time and size); ServiceUnavailable on failure."""
    import httpx  # here: the REST Lambda's cold start does not pay for it

    try:
        response = httpx.get(url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False,
                             headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise _unavailable(f"{url} could not be fetched ({exc})") from exc
    if response.status_code != 200:
        raise _unavailable(f"{url} answered {response.status_code}")
    if len(response.content) > MAX_DOCUMENT_BYTES:
        raise _unavailable(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return response.json()
    except ValueError as exc:
        raise _unavailable(f"{url} did not answer JSON") from exc


def _unavailable(detail: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The identity provider's keys cannot be read: {detail}. Check AUTH_JWT_ISSUER / AUTH_JWKS_URL; retry shortly.",
        code="identity_provider_unavailable",
    )


class ProviderKeys:
    """The signing keys of one issuer, by key id, shared by every request of the process."""

    def __init__(self, issuer: str, jwks_url: str | None = None, *, clock: Callable[[], float] = time.time,
                 fetch: Fetch = fetch_json) -> None:
        self.issuer = issuer
        self._jwks_url = jwks_url
        self._clock = clock
        self._fetch = fetch
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] | None = None
        self._fetched_at = float("-inf")
        self.fetches = 0  # JWKS requests made, for tests and benchmarks

    def key_for(self, kid: str) -> SigningKey:
        """The public key `kid` names; UnknownSigningKey when the provider does not publish it."""
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= MAX_AGE_SECONDS:
                self._refresh(now, keep_on_failure=self._keys is not None)
            assert self._keys is not None
            key = self._keys.get(kid)
            if key is None and now - self._fetched_at >= REFETCH_INTERVAL_SECONDS:
                self._refresh(now, keep_on_failure=True)
                key = self._keys.get(kid)
        if key is None:
            raise UnknownSigningKey(
                "The token is signed with a key the identity provider does not publish (unknown kid): "
                "sign in again for a fresh token."
            )
        return key

    def _refresh(self, now: float, *, keep_on_failure: bool) -> None:
        self._fetched_at = now  # a failed fetch also waits its minute: the provider is not hammered
        try:
            self._keys = self._load()
        except ServiceUnavailable as exc:
            if not keep_on_failure:
                raise
            log.warning("JWKS refresh failed, keeping the cached keys: %s", exc.message)

    def _load(self) -> dict[str, SigningKey]:
        url = self._jwks_url or self._discover()
        self.fetches += 1
        document = self._fetch(url)
        raw_keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw_keys, list):
            raise _unavailable(f"{url} is not a JWKS (no 'keys' list)")
        keys: dict[str, SigningKey] = {}
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig" or not isinstance(raw.get("kid"), str):
                continue
            try:
                alg = raw.get("alg")
                keys[raw["kid"]] = SigningKey(jwt.PyJWK(raw).key, alg if isinstance(alg, str) else None)
            except jwt.PyJWTError as exc:  # a key type or curve this API does not verify with
                log.info("JWKS key %s skipped: %s", raw.get("kid"), exc)
        return keys

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._fetch(url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            found = document.get("issuer") if isinstance(document, dict) else None
            raise _unavailable(f"{url} names issuer {found!r}, not AUTH_JWT_ISSUER={self.issuer!r} (they must match exactly)")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise _unavailable(f"{url} has no jwks_uri")
        self._jwks_url = jwks_uri
        return jwks_uri
