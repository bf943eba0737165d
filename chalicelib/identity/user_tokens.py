"""End-user tokens: verify the identity provider's, and mint and verify the service's own.

Which key checks a token is decided by its issuer, never by the algorithm it claims:
- `iss` = AUTH_JWT_ISSUER: an asymmetric signature by a key from the provider's JWKS. HS* is
  refused for this issuer: with an HMAC algorithm, a public key would serve as the secret
  (the key-confusion attack).
- `iss` = SERVICE_ISSUER: HS256 with USER_TOKEN_SECRET, and nothing else.
- anything else, and `alg: none`, is refused.
`iss` and `aud` must match exactly; `exp` is required; `exp` and `nbf` have 60 s of leeway.
Signatures are PyJWT's; the time claims are checked here, against an injectable clock.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import jwt

from chalicelib.config import AuthSettings
from chalicelib.errors import Misconfigured, Unauthorized
from chalicelib.identity.principal import EndUser
from chalicelib.identity.provider_keys import ProviderKeys, UnknownSigningKey
from chalicelib.ids import ID_PATTERN
from chalicelib.services.models import ApiModel

SERVICE_ISSUER = "urn:claude-agent-backend:user-tokens"
SERVICE_AUDIENCE = "urn:claude-agent-backend:api"
SERVICE_ALGORITHM = "HS256"
PROVIDER_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
LEEWAY_SECONDS = 60
MAX_TOKEN_CHARS = 16 * 1024


class InvalidUserToken(Unauthorized):
    code = "invalid_token"


class MintedToken(ApiModel):
    """`POST /users/{userId}/tokens`'s answer."""

    token: str
    expires_at: datetime
    user_id: str


class UserTokens:
    """Verifies end-user tokens into an `EndUser`, and mints the service's own."""

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] = time.time,
                 keys: ProviderKeys | None = None) -> None:
        self.settings = settings
        self.clock = clock
        if keys is None and settings.jwt_issuer is not None:
            keys = ProviderKeys(settings.jwt_issuer, settings.jwks_url, clock=clock)
        self.keys = keys

    # -- verify ----------------------------------------------------------------------------

    def verify(self, token: str) -> EndUser:
        """The user a token names; InvalidUserToken (401) for anything not verified."""
        if len(token) > MAX_TOKEN_CHARS:
            raise _refused(f"it is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refused("it is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _refused("unsigned tokens (alg: none) are never accepted")
        issuer = unverified.get("iss")
        if self.settings.user_token_secret is not None and issuer == SERVICE_ISSUER:
            claims = self._verify_own(token, alg)
            return self._user(claims, "sub")
        if self.keys is not None and issuer == self.settings.jwt_issuer:
            claims = self._verify_provider(token, alg, header.get("kid"))
            return self._user(claims, self.settings.jwt_user_claim)
        raise _refused("its issuer (iss) is not one this API trusts (AUTH_JWT_ISSUER)")

    def _verify_own(self, token: str, alg: str) -> dict[str, Any]:
        if alg != SERVICE_ALGORITHM:
            raise _refused(f"the service's own tokens are {SERVICE_ALGORITHM}, not {alg}")
        assert self.settings.user_token_secret is not None
        return self._decode(token, self.settings.user_token_secret.get_secret_value(), alg,
                            SERVICE_ISSUER, SERVICE_AUDIENCE)

    def _verify_provider(self, token: str, alg: str, kid: object) -> dict[str, Any]:
        if alg not in PROVIDER_ALGORITHMS:
            raise _refused(f"the identity provider's tokens must be signed with an asymmetric algorithm, not {alg}")
        if not isinstance(kid, str):
            raise _refused("it names no signing key (kid)")
        assert self.keys is not None and self.settings.jwt_issuer is not None and self.settings.jwt_audience is not None
        try:
            key = self.keys.key_for(kid)
        except UnknownSigningKey as exc:
            raise InvalidUserToken(exc.message) from None
        if key.alg is not None and key.alg != alg:
            raise _refused(f"key {kid!r} signs with {key.alg}, not {alg}")
        return self._decode(token, key.key, alg, self.settings.jwt_issuer, self.settings.jwt_audience)

    def _decode(self, token: str, key: Any, alg: str, issuer: str, audience: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], issuer=issuer, audience=audience,
                options={"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False},
            )
        except jwt.InvalidAudienceError:
            raise _refused("its audience (aud) is not this API's") from None
        except jwt.InvalidIssuerError:
            raise _refused("its issuer (iss) does not match") from None
        except jwt.InvalidSignatureError:
            raise _refused("its signature does not verify") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise _refused(f"it does not verify ({exc})") from None
        self._check_times(claims)
        return claims

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise _refused("its exp is not a number")
        if now > exp + LEEWAY_SECONDS:
            raise _refused("it has expired; sign in again", code="token_expired")
        if nbf is not None and (not _is_number(nbf) or now < nbf - LEEWAY_SECONDS):
            raise _refused("it is not valid yet (nbf)")

    @staticmethod
    def _user(claims: dict[str, Any], claim: str) -> EndUser:
        user_id = claims.get(claim)
        if not isinstance(user_id, str) or not ID_PATTERN.fullmatch(user_id) or user_id in (".", ".."):
            raise _refused(
                f"its {claim!r} claim is not a valid userId (1-128 letters, digits, '.', '_' or '-'); "
                "set AUTH_JWT_USER_CLAIM to a claim that is"
            )
        return EndUser(user_id)

    # -- mint ------------------------------------------------------------------------------

    def mint(self, user_id: str) -> MintedToken:
        """A short-lived token for `user_id`, signed with USER_TOKEN_SECRET."""
        secret = self.settings.user_token_secret
        if secret is None:
            raise Misconfigured(
                "USER_TOKEN_SECRET is not set, so this server cannot mint user tokens: store a random secret of "
                "32+ characters (./scripts/put-secrets), or have users sign in with your identity provider (AUTH_JWT_ISSUER).",
                code="user_token_secret_not_configured",
            )
        now = int(self.clock())
        expires = now + self.settings.user_token_ttl_seconds
        claims = {"iss": SERVICE_ISSUER, "aud": SERVICE_AUDIENCE, "sub": user_id, "iat": now, "nbf": now,
                  "exp": expires, "jti": secrets.token_urlsafe(12)}
        token = jwt.encode(claims, secret.get_secret_value(), algorithm=SERVICE_ALGORITHM)
        return MintedToken(token=token, expires_at=datetime.fromtimestamp(expires, timezone.utc), user_id=user_id)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refused(reason: str, *, code: str = "invalid_token") -> InvalidUserToken:
    return InvalidUserToken(f"The user token was refused: {reason}.", code=code)
