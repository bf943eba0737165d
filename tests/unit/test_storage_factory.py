"""How configuration picks and builds the storage backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.errors import Misconfigured
from chalicelib.storage.factory import build_store
from chalicelib.storage.local import LocalDirectoryStore
from chalicelib.storage.s3 import S3Store, build_s3_client


def test_r2_client_sends_checksums_only_when_required_and_retries_in_standard_mode() -> None:
    settings = Settings.from_env({"R2_ACCOUNT_ID": "acct123", "R2_ACCESS_KEY_ID": "k", "R2_SECRET_ACCESS_KEY": "s"})
    client = build_s3_client(settings.storage)
    config = client.meta.config
    # R2 rejects boto3's default aws-chunked CRC32 trailer (NOTES §3).
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.retries["mode"] == "standard"
    assert client.meta.endpoint_url == "https://acct123.r2.cloudflarestorage.com"
    assert client.meta.region_name == "auto"


def test_custom_endpoint_wins_over_account() -> None:
    settings = Settings.from_env({"S3_ENDPOINT_URL": "http://127.0.0.1:9000", "R2_BUCKET": "b"})
    assert settings.storage.backend == "s3"
    assert build_s3_client(settings.storage).meta.endpoint_url == "http://127.0.0.1:9000"


def test_development_defaults_to_the_embedded_store(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    store = build_store(settings)
    assert isinstance(store, LocalDirectoryStore)
    assert store.root == tmp_path.resolve()


def test_bucket_setting_selects_s3() -> None:
    settings = Settings.from_env({"R2_BUCKET": "mine"})
    assert isinstance(build_store(settings), S3Store)
    assert settings.storage.bucket == "mine"


def test_default_bucket_is_the_originals() -> None:
    assert Settings.from_env({"R2_ACCOUNT_ID": "a"}).storage.bucket == "claude-agent-user-data"


def test_production_refuses_the_embedded_store() -> None:
    settings = Settings.from_env({"ENVIRONMENT": "production", "STORAGE_BACKEND": "local"})
    with pytest.raises(Misconfigured) as caught:
        build_store(settings)
    assert "Lambda's disk does not persist" in caught.value.message
    assert caught.value.code == "local_store_in_production"


def test_production_without_storage_settings_uses_s3() -> None:
    assert Settings.from_env({"ENVIRONMENT": "production"}).storage.backend == "s3"


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"ENVIRONMENT": "staging"}, "ENVIRONMENT"),
        ({"STORAGE_BACKEND": "ftp"}, "STORAGE_BACKEND"),
        ({"SANDBOX_IDLE_TIMEOUT": "soon"}, "SANDBOX_IDLE_TIMEOUT"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(Misconfigured) as caught:
        Settings.from_env(env)
    assert needle in caught.value.message


def test_storage_timeouts_and_attempts_come_from_settings() -> None:
    config = build_s3_client(Settings.from_env({"S3_ENDPOINT_URL": "http://127.0.0.1:9000"}).storage).meta.config
    # The README's worst case for a hung endpoint is computed from these defaults.
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (2.0, 5.0, 3)
    tuned = Settings.from_env({"S3_ENDPOINT_URL": "http://127.0.0.1:9000", "STORAGE_CONNECT_TIMEOUT": "0.5",
                               "STORAGE_READ_TIMEOUT": "1.5", "STORAGE_MAX_ATTEMPTS": "2"})
    config = build_s3_client(tuned.storage).meta.config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (0.5, 1.5, 2)
    with pytest.raises(Misconfigured, match="STORAGE_READ_TIMEOUT"):
        Settings.from_env({"STORAGE_READ_TIMEOUT": "soon"})
