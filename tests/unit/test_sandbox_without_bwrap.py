"""Where bubblewrap is missing: refuse with the package's name, or run unisolated when allowed."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import IsolationUnavailable, SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider


@pytest.fixture
def no_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_development_refuses_and_names_the_package(no_bwrap: None, tmp_path: Path) -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path)}))
    assert "apt-get install bubblewrap" in str(caught.value) and "SANDBOX_ALLOW_UNISOLATED=1" in str(caught.value)


def test_production_refuses_even_when_unisolated_is_allowed(no_bwrap: None, tmp_path: Path) -> None:
    with pytest.raises(IsolationUnavailable):
        LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path), "ENVIRONMENT": "production",
                                                "SANDBOX_ALLOW_UNISOLATED": "1"}))


def test_unisolated_mode_warns_loudly_and_still_clears_the_environment(
    no_bwrap: None, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-unisolated")
    with caplog.at_level(logging.WARNING):
        provider = LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path), "SANDBOX_ALLOW_UNISOLATED": "1"}))
    assert provider.kind == "unisolated"
    assert any("WITHOUT isolation" in r.message for r in caplog.records)
    sandbox = provider.create("u1", SandboxOptions())
    sandbox.write_file("/workspace/a.txt", "hi")
    result = sandbox.exec("/bin/cat a.txt; /usr/bin/env")
    assert result.stdout.startswith("hi") and "sk-secret-unisolated" not in result.stdout
    provider.destroy("u1")


def test_a_bwrap_that_cannot_create_namespaces_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # What bwrap prints in a container without CAP_SYS_ADMIN. Outside pytest's 0700 folder: bwrap
    # is started as the session's uid, which must be able to run it.
    fake = Path(tempfile.mkdtemp(prefix="fake-bwrap-"))
    fake.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(fake, ignore_errors=True))
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    with pytest.raises(IsolationUnavailable) as caught:
        LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / "sb"), "ENVIRONMENT": "production"}))
    message = str(caught.value)
    assert "Creating new namespace failed: Operation not permitted" in message and "CAP_SYS_ADMIN" in message
    assert list((tmp_path / "sb").iterdir()) == []  # the probe cleaned up after itself
