"""End users signed in through a real OpenID provider (npm's oidc-provider, run by node).

The gateway verifies the provider's access tokens (discovery, JWKS, ES256) and lets each user
reach only their own data, over REST, the files API and the websocket. The route x credential
matrix of issue 23 is `MATRIX` below; each cell is asserted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chalicelib.config import current_settings
from chalicelib.container import get_container
from chalicelib.identity.user_tokens import UserTokens
from tests.fakes.fake_anthropic import Reply, Text
from tests.support.gateway import receive_until
from tests.support.oidc import OidcProvider, oidc_provider

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

OPERATOR_KEY = "operator-key-for-tests"
SECRET = "user-token-secret-for-tests-0123456789"


class Clock:
    """The verifier's clock, which a test moves forward (to expire tokens, or pass the JWKS minute)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Tenants:
    http: httpx.Client
    provider: OidcProvider
    clock: Clock
    ws_base: str

    def call(self, method: str, path: str, token: str | None, body: Any = None, raw: bytes | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if raw is not None:
            return self.http.request(method, path, headers=headers, content=raw)
        if body is not None:
            return self.http.request(method, path, headers=headers, json=body)
        return self.http.request(method, path, headers=headers)

    def ws(self, session: str, *, bearer: str | None = None, query: str = "") -> Any:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        return connect(f"{self.ws_base}?sessionId={session}{query}", additional_headers=headers)


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider() as started:
        yield started


def configure(world: Any, provider: OidcProvider, monkeypatch: pytest.MonkeyPatch) -> Tenants:
    monkeypatch.setenv("API_KEY", OPERATOR_KEY)
    monkeypatch.setenv("AUTH_JWT_ISSUER", provider.issuer)
    monkeypatch.setenv("AUTH_JWT_AUDIENCE", provider.audience)
    monkeypatch.setenv("USER_TOKEN_SECRET", SECRET)
    settings = current_settings()
    clock = Clock()
    get_container(settings).override("user_tokens", UserTokens(settings.auth, clock=clock))
    ws_base = world.url.replace("http://", "ws://") + "/ws"
    return Tenants(world.http, provider, clock, ws_base)


@pytest.fixture
def tenants(world: Any, provider: OidcProvider, monkeypatch: pytest.MonkeyPatch) -> Tenants:
    return configure(world, provider, monkeypatch)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


def forged_tokens(t: Tenants, alice: str) -> dict[str, str]:
    """Tokens that must all be refused: each built from what an attacker can get."""
    head, body, sig = alice.split(".")
    claims = claims_of(alice)
    public = jwt.PyJWK(t.provider.jwks()["keys"][0]).key
    from cryptography.hazmat.primitives import serialization

    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": t.provider.kids[0]}).encode())
    hs_body = b64(json.dumps(claims).encode())
    attacker = ec.generate_private_key(ec.SECP256R1())
    return {
        "alg none": b64(b'{"alg":"none","typ":"JWT"}') + "." + body + ".",
        "HS256 signed with the provider's public key": f"{hs_head}.{hs_body}."
        + b64(hmac.new(pem, f"{hs_head}.{hs_body}".encode(), hashlib.sha256).digest()),
        "wrong aud (a real token for another API)": t.provider.token("alice", resource="https://other-api.test"),
        "unknown kid (the attacker's own key)": jwt.encode(claims, attacker, algorithm="ES256", headers={"kid": "attacker"}),
        "known kid, the attacker's signature": jwt.encode(claims, attacker, algorithm="ES256",
                                                          headers={"kid": t.provider.kids[0]}),
        "tampered payload": f"{head}.{b64(json.dumps({**claims, 'sub': 'bob'}).encode())}.{sig}",
        "the service's issuer, not signed with USER_TOKEN_SECRET": jwt.encode(
            {**claims, "iss": "urn:claude-agent-backend:user-tokens", "aud": "urn:claude-agent-backend:api"},
            "an-attacker-s-guess-at-the-secret-0123", algorithm="HS256"),
    }


def test_discovery_then_alice_reaches_her_data_over_rest_files_and_websocket(tenants: Tenants, world: Any) -> None:
    t = tenants
    alice = t.provider.token("alice")
    assert claims_of(alice)["iss"] == t.provider.issuer and claims_of(alice)["sub"] == "alice"
    skill = t.call("POST", "/users/alice/skills", alice, {"name": "notes.md", "content": "# Notes\nAlice's own."})
    assert skill.status_code == 200, skill.text
    assert t.call("GET", "/users/alice/skills", alice).json()["skills"] == ["notes.md"]
    setup = t.call("POST", "/setup/alice-s1", alice)  # no ?userId=: the token's user
    assert setup.status_code == 200, setup.text
    assert setup.json()["userId"] == "alice"
    put = t.call("PUT", "/sessions/alice-s1/files/content?path=plan.txt", alice, raw=b"alice's plan")
    assert put.status_code == 200, put.text
    assert t.call("GET", "/sessions/alice-s1/files/content?path=plan.txt", alice).content == b"alice's plan"
    assert "/workspace/plan.txt" in [f["path"] for f in t.call("GET", "/sessions/alice-s1/files", alice).json()["files"]]

    world.fake.script(Reply([Text("hello alice")]))
    with t.ws("alice-s1", bearer=alice) as ws:  # the token in Authorization
        ws.send(json.dumps({"action": "message", "prompt": "hi"}))
        assert receive_until(ws, "result")[-1]["event"] == "result"
    with t.ws("alice-s1", query=f"&access_token={alice}") as ws:  # or in ?access_token= (browsers)
        ws.send(json.dumps({"action": "get_history"}))
        history = receive_until(ws, "history")[-1]
    assert history["messages"][-1]["content"][0]["text"] == "hello alice"
    with t.ws("alice-s1", query=f"&token={setup.json()['token']}") as ws:  # the /setup token still works
        ws.send(json.dumps({"action": "get_history"}))
        assert receive_until(ws, "history")[-1]["event"] == "history"


def test_bob_is_refused_everywhere_and_learns_nothing(tenants: Tenants) -> None:
    t = tenants
    alice, bob = t.provider.token("alice"), t.provider.token("bob")
    assert t.call("POST", "/setup/alice-s2", alice).status_code == 200
    assert t.call("PUT", "/sessions/alice-s2/files/content?path=secret.txt", alice, raw=b"alice only").status_code == 200
    before = t.call("GET", "/sessions/alice-s2/files", OPERATOR_KEY).json()
    refusals = [
        t.call("GET", "/users/alice/skills", bob),
        t.call("GET", "/users/alice/settings", bob),
        t.call("POST", "/users/alice/conversations", bob, {"conversationId": "c", "messages": []}),
        t.call("POST", "/setup/alice-s2", bob),
        t.call("POST", "/setup/alice-s2?userId=bob", bob),
        t.call("POST", "/setup/fresh-id?userId=alice", bob),
        t.call("GET", "/sessions/alice-s2/files", bob),
        t.call("GET", "/sessions/alice-s2/files/content?path=secret.txt", bob),
        t.call("PUT", "/sessions/alice-s2/files/content?path=x.txt", bob, raw=b"bob was here"),
        t.call("DELETE", "/sandbox/alice-s2", bob),
        # A session that does not exist answers exactly as Alice's does: nothing to probe.
        t.call("GET", "/sessions/no-such-session/files", bob),
        t.call("DELETE", "/sandbox/no-such-session", bob),
        t.call("GET", "/users/nobody-at-all/skills", bob),
    ]
    assert {(r.status_code, r.json()["code"], r.json()["error"]) for r in refusals} == {
        (403, "forbidden_user", refusals[0].json()["error"])}
    assert t.call("GET", "/sessions/alice-s2/files", OPERATOR_KEY).json() == before
    for query, bearer in ((f"&access_token={bob}", None), ("", bob)):
        for session in ("alice-s2", "no-such-session"):
            with pytest.raises(InvalidStatus) as refused:
                t.ws(session, bearer=bearer, query=query).close()
            assert refused.value.response.status_code == 403
            assert json.loads(refused.value.response.body)["code"] == "forbidden_user"


def test_operator_routes_refuse_user_tokens_and_minted_tokens_work(tenants: Tenants) -> None:
    t = tenants
    alice = t.provider.token("alice")
    assert t.call("POST", "/users/alice/tokens", alice).status_code == 403
    assert t.call("DELETE", "/users/alice", alice).json()["code"] == "forbidden_user"
    minted = t.call("POST", "/users/carol/tokens", OPERATOR_KEY)
    assert minted.status_code == 200, minted.text
    carol = minted.json()["token"]
    assert minted.json()["expiresAt"] and claims_of(carol)["sub"] == "carol"
    assert t.call("POST", "/users/carol/skills", carol, {"name": "c.md", "content": "carol"}).status_code == 200
    assert t.call("GET", "/users/alice/skills", carol).json()["code"] == "forbidden_user"
    assert t.call("POST", "/setup/carol-s1", carol).status_code == 200
    with t.ws("carol-s1", query=f"&access_token={carol}") as ws:
        ws.send(json.dumps({"action": "get_history"}))
        assert receive_until(ws, "history")[-1]["event"] == "history"


def test_expired_tokens_are_refused(tenants: Tenants) -> None:
    t = tenants
    alice = t.provider.token("alice")
    assert t.call("GET", "/users/alice/skills", alice).status_code == 200
    assert t.call("POST", "/setup/alice-s3", alice).status_code == 200
    t.clock.offset = claims_of(alice)["exp"] - time.time() + 61  # past exp and its 60 s of leeway
    expired = t.call("GET", "/users/alice/skills", alice)
    assert expired.status_code == 401 and expired.json()["code"] == "token_expired"
    with pytest.raises(InvalidStatus) as refused:
        t.ws("alice-s3", bearer=alice).close()
    assert refused.value.response.status_code == 401
    fresh = t.provider.token("alice")
    t.clock.offset = 0
    assert t.call("GET", "/users/alice/skills", fresh).status_code == 200


def test_forged_tokens_are_refused_over_http_and_websocket(tenants: Tenants) -> None:
    t = tenants
    alice = t.provider.token("alice")
    assert t.call("POST", "/setup/alice-s4", alice).status_code == 200
    t.clock.offset = 61  # past the JWKS minute: an unknown kid may refetch (and still not be found)
    for name, forged in forged_tokens(t, alice).items():
        for path in ("/users/alice/skills", "/users/bob/skills"):
            answer = t.call("GET", path, forged)
            assert answer.status_code == 401 and answer.json()["code"] == "invalid_token", (name, path, answer.text)
        with pytest.raises(InvalidStatus) as refused:
            t.ws("alice-s4", bearer=forged).close()
        assert refused.value.response.status_code == 401, name
    assert t.call("GET", "/users/alice/skills", alice).status_code == 200


def test_key_rotation_without_a_restart(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with oidc_provider(["k1"]) as own:
        t = configure(world, own, monkeypatch)
        before = own.token("alice")
        assert t.call("GET", "/users/alice/skills", before).status_code == 200
        own.rotate(["k2"])  # the provider now signs with a new key and publishes only it
        after = own.token("alice")
        assert jwt.get_unverified_header(after)["kid"] == "k2"
        t.clock.offset = 61  # the JWKS was fetched a minute ago: an unknown kid refetches it
        assert t.call("GET", "/users/alice/skills", after).status_code == 200
        old = t.call("GET", "/users/alice/skills", before)
        assert old.status_code == 401 and old.json()["code"] == "invalid_token"  # the withdrawn key


OWNER, OPERATOR_ONLY = "owner", "operator"
# (method, path, body or raw bytes, who may call it). Run in this order, each with every credential
# (forged, another user's, own, operator): the deletes come after what reads what they delete.
MATRIX: list[tuple[str, str, Any, str]] = [
    ("GET", "/users/alice/skills", None, OWNER),
    ("POST", "/users/alice/skills", {"name": "m.md", "content": "# M\nmatrix"}, OWNER),
    ("GET", "/users/alice/skills/m.md", None, OWNER),
    ("POST", "/users/alice/conversations", {"conversationId": "c1", "messages": []}, OWNER),
    ("GET", "/users/alice/conversations", None, OWNER),
    ("GET", "/users/alice/conversations/c1", None, OWNER),
    ("GET", "/users/alice/settings", None, OWNER),
    ("PUT", "/users/alice/settings", {"maxTurns": 3}, OWNER),
    ("PATCH", "/users/alice/settings", {"maxTurns": 4}, OWNER),
    ("GET", "/users/alice/limits", None, OWNER),
    ("GET", "/users/alice/usage", None, OWNER),
    ("POST", "/setup/m-alice?userId=alice", None, OWNER),
    ("PUT", "/sessions/m-alice/files/content?path=m.txt", b"matrix file", OWNER),
    ("GET", "/sessions/m-alice/files", None, OWNER),
    ("GET", "/sessions/m-alice/files/content?path=m.txt", None, OWNER),
    ("DELETE", "/sessions/m-alice/files/content?path=m.txt", None, OWNER),
    ("DELETE", "/users/alice/conversations/c1", None, OWNER),
    ("DELETE", "/users/alice/skills/m.md", None, OWNER),
    ("PUT", "/users/alice/limits", {"maxSessions": 5}, OPERATOR_ONLY),
    ("POST", "/users/alice/tokens", None, OPERATOR_ONLY),
    ("DELETE", "/sandbox/m-alice", None, OWNER),
    ("DELETE", "/users/alice", None, OPERATOR_ONLY),
]


def test_the_route_by_credential_matrix(tenants: Tenants, monkeypatch: pytest.MonkeyPatch) -> None:
    t = tenants
    alice, bob = t.provider.token("alice"), t.provider.token("bob")
    head, body, sig = alice.split(".")
    forged = f"{head}.{b64(json.dumps({**claims_of(alice), 'sub': 'bob'}).encode())}.{sig}"  # alice's signature, bob's name
    assert t.call("POST", "/setup/m-alice", alice).status_code == 200
    credentials = [("forged", forged), ("other user's", bob), ("own", alice), ("operator key", OPERATOR_KEY)]
    answers: dict[tuple[str, str], int] = {}
    for method, path, payload, who in MATRIX:
        for name, token in credentials:
            if isinstance(payload, bytes):
                response = t.call(method, path, token, raw=payload)
            else:
                response = t.call(method, path, token, payload)
            answers[(f"{method} {path}", name)] = response.status_code
            if name == "forged":
                expected = {401}
            elif name == "other user's" or (name == "own" and who == OPERATOR_ONLY):
                expected = {403}
            elif method == "DELETE" and name == "operator key" and who == OWNER:
                expected = {200, 404}  # the owner's own call deleted it a moment ago
            else:
                expected = {200}
            assert response.status_code in expected, (method, path, name, response.status_code, response.text[:200])
            if response.status_code == 403:
                assert response.json()["code"] == "forbidden_user"
            if response.status_code == 401:
                assert response.json()["code"] == "invalid_token"
    assert t.call("GET", "/health", forged).status_code == 200
    # The websocket's $connect, then a frame on the connection it opened.
    assert t.call("POST", "/setup/m-ws?userId=alice", OPERATOR_KEY).status_code == 200
    for name, token, status in (("forged", forged, 401), ("other user's", bob, 403)):
        for query, bearer in ((f"&access_token={token}", None), ("", token)):
            with pytest.raises(InvalidStatus) as refused:
                t.ws("m-ws", bearer=bearer, query=query).close()
            assert refused.value.response.status_code == status, name
    for name, token in (("own", alice), ("operator key", OPERATOR_KEY)):
        with t.ws("m-ws", bearer=token) as ws:
            ws.send(json.dumps({"action": "get_history"}))
            history = receive_until(ws, "history")[-1]
            assert history["conversationId"] == "m-ws", name
    print("\n" + "\n".join(f"{route:55s} {cred:14s} {status}" for (route, cred), status in answers.items()))
