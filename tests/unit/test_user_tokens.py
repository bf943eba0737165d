"""User token verification: the forged-token table, the key cache, and minting.

The provider here is a key made in the test and served through the fetch seam, so each forged
token differs from a good one in exactly one way (the real provider's tests are in
tests/e2e/test_user_tokens_oidc.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chalicelib.config import AuthSettings, Settings
from chalicelib.errors import Misconfigured, ServiceUnavailable
from chalicelib.identity.principal import EndUser
from chalicelib.identity.provider_keys import ProviderKeys
from chalicelib.identity.token_shape import looks_like_jwt
from chalicelib.identity.user_tokens import SERVICE_AUDIENCE, SERVICE_ISSUER, InvalidUserToken, UserTokens

ISSUER = "https://id.example.test/"
AUDIENCE = "https://api.example.test"
SECRET = "s" * 40
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Provider:
    """Keys by kid, served as discovery + JWKS through `fetch` (which counts requests)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.requests: list[str] = []
        self.add("k1", ec.generate_private_key(ec.SECP256R1()), "ES256")

    def add(self, kid: str, private: Any, alg: str) -> None:
        self.keys[kid] = (private, alg)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, (private, alg) in self.keys.items():
            algo = jwt.get_algorithm_by_name(alg)
            jwk = algo.to_jwk(private.public_key(), as_dict=True)  # type: ignore[attr-defined]
            out.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": out}

    def fetch(self, url: str) -> Any:
        self.requests.append(url)
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": "https://id.example.test/jwks"}
        return self.jwks()

    def sign(self, claims: dict[str, Any] | None = None, kid: str = "k1", **headers: Any) -> str:
        private, alg = self.keys[kid]
        return jwt.encode({**good_claims(), **(claims or {})}, private, algorithm=alg, headers={"kid": kid, **headers})


def good_claims() -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict[str, Any], key: bytes, kid: str = "k1") -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def verifier(provider: Provider, clock: Clock, **auth: Any) -> UserTokens:
    settings = AuthSettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, user_token_secret=SECRET, **auth)
    return UserTokens(settings, clock=clock, keys=ProviderKeys(ISSUER, clock=clock, fetch=provider.fetch))


def public_pem(provider: Provider) -> bytes:
    return provider.keys["k1"][0].public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[no-any-return]
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)


def tampered(token: str, **changes: Any) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return f"{head}.{b64(json.dumps({**claims, **changes}).encode())}.{sig}"


FORGED: dict[str, Callable[[Provider], str]] = {
    "alg none": lambda p: b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(good_claims()).encode()) + ".",
    "alg none, signature kept": lambda p: (
        b64(b'{"alg":"none","kid":"k1"}') + "." + p.sign().split(".", 2)[1] + "." + p.sign().split(".", 2)[2]),
    "HS256 signed with the provider's public key (PEM)": lambda p: hs256(good_claims(), public_pem(p)),
    "HS256 signed with the provider's public JWK": lambda p: hs256(good_claims(), json.dumps(p.jwks()["keys"][0]).encode()),
    "HS256 with the provider's issuer and the service's secret": lambda p: hs256(good_claims(), SECRET.encode()),
    "wrong iss": lambda p: p.sign({"iss": "https://evil.example.test/"}),
    "iss differing by a trailing slash": lambda p: p.sign({"iss": ISSUER.rstrip("/")}),
    "wrong aud": lambda p: p.sign({"aud": "https://other-api.example.test"}),
    "aud a prefix of ours": lambda p: p.sign({"aud": AUDIENCE[:-1]}),
    "no aud": lambda p: jwt.encode({k: v for k, v in good_claims().items() if k != "aud"}, p.keys["k1"][0],
                                   algorithm="ES256", headers={"kid": "k1"}),
    "expired past the leeway": lambda p: p.sign({"exp": int(NOW) - 61}),
    "no exp": lambda p: jwt.encode({k: v for k, v in good_claims().items() if k != "exp"}, p.keys["k1"][0],
                                   algorithm="ES256", headers={"kid": "k1"}),
    "nbf in the future past the leeway": lambda p: p.sign({"nbf": int(NOW) + 61}),
    "unknown kid": lambda p: (p.add("k9", ec.generate_private_key(ec.SECP256R1()), "ES256"), p.sign(kid="k9"),
                              p.keys.pop("k9"))[1],
    "known kid, another key's signature": lambda p: jwt.encode(good_claims(), ec.generate_private_key(ec.SECP256R1()),
                                                               algorithm="ES256", headers={"kid": "k1"}),
    "no kid": lambda p: jwt.encode(good_claims(), p.keys["k1"][0], algorithm="ES256"),
    "tampered payload (sub changed to bob)": lambda p: tampered(p.sign(), sub="bob"),
    "tampered payload (exp extended)": lambda p: tampered(p.sign({"exp": int(NOW) - 3600}), exp=int(NOW) + 3600),
    "ES256 header on a key pinned to ES256, signed RS256": lambda p: jwt.encode(
        good_claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256",
        headers={"kid": "k1"}),
    "the service's issuer, signed with another secret": lambda p: jwt.encode(
        {**good_claims(), "iss": SERVICE_ISSUER, "aud": SERVICE_AUDIENCE}, "x" * 40, algorithm="HS256"),
    "the service's issuer, signed by the provider's key": lambda p: p.sign({"iss": SERVICE_ISSUER, "aud": SERVICE_AUDIENCE}),
    "a userId claim that is not a valid id": lambda p: p.sign({"sub": "../bob"}),
    "not a JWT": lambda p: "abc.def.ghi",
}


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_tokens_are_refused(provider: Provider, clock: Clock, name: str) -> None:
    tokens = verifier(provider, clock)
    assert tokens.verify(provider.sign()) == EndUser("alice")  # the good token this one is forged from
    forged = FORGED[name](provider)
    with pytest.raises(InvalidUserToken) as refused:
        tokens.verify(forged)
    assert refused.value.status == 401 and refused.value.code in ("invalid_token", "token_expired")


def test_a_claim_naming_another_user_is_not_the_user(provider: Provider, clock: Clock) -> None:
    tokens = verifier(provider, clock)
    # Another claim naming bob does not make the token bob's: only AUTH_JWT_USER_CLAIM does.
    assert tokens.verify(provider.sign({"userId": "bob", "user_id": "bob"})) == EndUser("alice")
    custom = verifier(provider, clock, jwt_user_claim="https://example.test/userId")
    assert custom.verify(provider.sign({"https://example.test/userId": "carol"})) == EndUser("carol")
    with pytest.raises(InvalidUserToken):
        custom.verify(provider.sign())  # the claim is missing: sub does not stand in for it


def test_leeway_is_sixty_seconds_both_ways(provider: Provider, clock: Clock) -> None:
    tokens = verifier(provider, clock)
    assert tokens.verify(provider.sign({"exp": int(NOW) - 59})) == EndUser("alice")
    assert tokens.verify(provider.sign({"nbf": int(NOW) + 59})) == EndUser("alice")
    token = provider.sign({"exp": int(NOW) + 10})
    clock.now += 71
    with pytest.raises(InvalidUserToken) as expired:
        tokens.verify(token)
    assert expired.value.code == "token_expired"


@pytest.mark.parametrize("alg,make", [
    ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("PS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
    ("EdDSA", lambda: ed25519.Ed25519PrivateKey.generate()),
])
def test_every_asymmetric_algorithm_verifies(provider: Provider, clock: Clock, alg: str, make: Callable[[], Any]) -> None:
    provider.add("k2", make(), alg)
    assert verifier(provider, clock).verify(provider.sign(kid="k2")) == EndUser("alice")


def test_keys_are_cached_and_an_unknown_kid_refetches_at_most_once_a_minute(provider: Provider, clock: Clock) -> None:
    tokens = verifier(provider, clock)
    for _ in range(5):
        tokens.verify(provider.sign())
    assert len(provider.requests) == 2  # discovery once, the JWKS once
    provider.add("k2", ec.generate_private_key(ec.SECP256R1()), "ES256")  # the provider rotates
    rotated = provider.sign(kid="k2")
    clock.now += 30
    with pytest.raises(InvalidUserToken):
        tokens.verify(rotated)  # fetched 30 s ago: not again yet
    for _ in range(20):
        with pytest.raises(InvalidUserToken):
            tokens.verify(provider.sign(kid="k2"))
    assert len(provider.requests) == 2
    clock.now += 31
    assert tokens.verify(rotated) == EndUser("alice")  # a minute on: one refetch finds the new key
    assert len(provider.requests) == 3
    with pytest.raises(InvalidUserToken):
        tokens.verify(jwt.encode(good_claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                                 headers={"kid": "made-up"}))
    assert len(provider.requests) == 3  # a made-up kid right after a fetch costs nothing


def test_a_withdrawn_key_stops_working_within_the_hour(provider: Provider, clock: Clock) -> None:
    tokens = verifier(provider, clock)
    old = provider.sign({"exp": int(NOW) + 86_400})
    assert tokens.verify(old) == EndUser("alice")
    provider.keys = {}
    provider.add("k2", ec.generate_private_key(ec.SECP256R1()), "ES256")
    clock.now += 3601
    with pytest.raises(InvalidUserToken):
        tokens.verify(old)


def test_discovery_must_name_the_same_issuer(clock: Clock) -> None:
    def fetch(url: str) -> Any:
        return {"issuer": "https://someone-else.test/", "jwks_uri": "https://someone-else.test/jwks"}

    keys = ProviderKeys(ISSUER, clock=clock, fetch=fetch)
    with pytest.raises(ServiceUnavailable) as failed:
        keys.key_for("k1")
    assert failed.value.code == "identity_provider_unavailable"


def test_an_unreachable_provider_is_503_and_cached_keys_outlive_it(provider: Provider, clock: Clock) -> None:
    up = {"yes": True}

    def fetch(url: str) -> Any:
        if not up["yes"]:
            raise ServiceUnavailable("down", code="identity_provider_unavailable")
        return provider.fetch(url)

    tokens = UserTokens(AuthSettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE), clock=clock,
                        keys=ProviderKeys(ISSUER, clock=clock, fetch=fetch))
    up["yes"] = False
    with pytest.raises(ServiceUnavailable):
        tokens.verify(provider.sign())
    up["yes"] = True
    clock.now += 61
    assert tokens.verify(provider.sign({"exp": int(clock.now) + 600})) == EndUser("alice")
    up["yes"] = False
    clock.now += 3601
    assert tokens.verify(provider.sign({"exp": int(clock.now) + 600})) == EndUser("alice")


def test_minted_tokens_verify_only_against_the_secret(provider: Provider, clock: Clock) -> None:
    tokens = verifier(provider, clock)
    minted = tokens.mint("alice")
    assert tokens.verify(minted.token) == EndUser("alice")
    assert minted.expires_at.timestamp() == NOW + 900
    other = UserTokens(AuthSettings(user_token_secret="y" * 40), clock=clock)
    with pytest.raises(InvalidUserToken):
        other.verify(minted.token)
    provider_only = UserTokens(AuthSettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE), clock=clock,
                               keys=ProviderKeys(ISSUER, clock=clock, fetch=provider.fetch))
    with pytest.raises(InvalidUserToken):
        provider_only.verify(minted.token)  # without USER_TOKEN_SECRET the service's issuer is not trusted
    clock.now += 900 + 61
    with pytest.raises(InvalidUserToken):
        tokens.verify(minted.token)
    with pytest.raises(Misconfigured) as unset:
        provider_only.mint("alice")
    assert unset.value.code == "user_token_secret_not_configured"


def test_jwt_shape() -> None:
    assert looks_like_jwt("eyJh.eyJz.sig-_")
    assert not looks_like_jwt("right-key") and not looks_like_jwt("a.b") and not looks_like_jwt("a.b.c d")


@pytest.mark.parametrize("env,needle", [
    ({"AUTH_JWT_ISSUER": ISSUER}, "AUTH_JWT_AUDIENCE"),
    ({"USER_TOKEN_SECRET": "short"}, "USER_TOKEN_SECRET"),
])
def test_settings_refuse_half_configured_auth(env: dict[str, str], needle: str) -> None:
    with pytest.raises(Misconfigured) as bad:
        Settings.from_env(env)
    assert needle in bad.value.message

