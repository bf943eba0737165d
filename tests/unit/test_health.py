"""/health's hasR2 means R2 with its token, not "some S3 endpoint"."""

from __future__ import annotations

import pytest

from chalicelib.config import Settings
from chalicelib.services.health import check_health


@pytest.mark.parametrize(("env", "has_r2"), [
    ({}, False),
    ({"S3_ENDPOINT_URL": "http://127.0.0.1:9"}, False),
    ({"S3_ENDPOINT_URL": "http://127.0.0.1:9", "R2_ACCESS_KEY_ID": "k", "R2_SECRET_ACCESS_KEY": "s"}, False),
    ({"R2_ACCOUNT_ID": "abc"}, False),
    ({"R2_ACCOUNT_ID": "abc", "R2_ACCESS_KEY_ID": "k"}, False),
    ({"R2_ACCOUNT_ID": "abc", "R2_ACCESS_KEY_ID": "k", "R2_SECRET_ACCESS_KEY": "s"}, True),
    ({"S3_ENDPOINT_URL": "https://abc.r2.cloudflarestorage.com", "R2_ACCESS_KEY_ID": "k", "R2_SECRET_ACCESS_KEY": "s"}, True),
])
def test_has_r2_only_for_r2_with_credentials(env: dict[str, str], has_r2: bool) -> None:
    settings = Settings.from_env(env)
    health = check_health(settings, "bwrap")
    assert health.has_r2 is has_r2 and health.offline_model is False


def test_offline_model_is_reported_in_camel_case() -> None:
    health = check_health(Settings.from_env({"OFFLINE_MODEL": "1"}), "bwrap")
    assert health.model_dump(by_alias=True)["offlineModel"] is True
