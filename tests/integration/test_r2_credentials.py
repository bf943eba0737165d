"""The R2 temporary-credentials adapter against a loopback stand-in of Cloudflare's endpoint."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from chalicelib.storage.r2_credentials import (
    MAX_TTL_SECONDS,
    R2TemporaryCredentials,
    TemporaryCredentialsError,
)
from tests.fakes.fake_cloudflare import FakeCloudflare
from tests.support.sandbox_host import free_port


def issuer(base_url: str, token: str = "cf-token", account: str = "acct1") -> R2TemporaryCredentials:
    return R2TemporaryCredentials(api_token=SecretStr(token), account_id=account, bucket="b1",
                                  parent_access_key_id="parent", base_url=base_url, timeout_seconds=3)


def test_issues_scoped_credentials_with_the_ttl_capped_at_cloudflare_s_limit() -> None:
    with FakeCloudflare(api_token="cf-token", account_id="acct1") as cloudflare:
        issued = issuer(cloudflare.base_url).issue(["users/alice/skills/"], 10 * MAX_TTL_SECONDS)
    [request] = cloudflare.issued
    assert request.request == {"bucket": "b1", "parentAccessKeyId": "parent", "permission": "object-read-write",
                               "ttlSeconds": MAX_TTL_SECONDS, "prefixes": ["users/alice/skills/"]}
    assert issued.session_token.get_secret_value() == request.session_token
    assert request.session_token not in repr(issued)  # secrets stay out of logs and reprs


@pytest.mark.parametrize("token, account", [("wrong", "acct1"), ("cf-token", "other-account")])
def test_a_refusal_says_what_cloudflare_said_and_what_to_check(token: str, account: str) -> None:
    with FakeCloudflare(api_token="cf-token", account_id="acct1") as cloudflare:
        with pytest.raises(TemporaryCredentialsError) as refused:
            issuer(cloudflare.base_url, token, account).issue(["users/alice/skills/"], 900)
    assert cloudflare.refused and cloudflare.refused[0] in str(refused.value)
    assert "CLOUDFLARE_API_TOKEN" in str(refused.value)


def test_an_unreachable_endpoint_is_an_error_not_a_hang() -> None:
    with pytest.raises(TemporaryCredentialsError) as unreachable:
        issuer(f"http://127.0.0.1:{free_port()}/client/v4").issue(["users/alice/skills/"], 900)
    assert "could not be reached" in str(unreachable.value)
