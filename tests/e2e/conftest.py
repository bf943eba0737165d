"""End-to-end fixtures: the gateway, the fake model, a clean environment per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support.api import ROOT
from tests.support.gateway import running_gateway

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def gateway_url() -> Iterator[str]:
    with running_gateway() as url:
        yield url


@dataclass
class World:
    url: str
    fake: FakeAnthropic
    http: httpx.Client
    data_dir: Path

    def setup(self, session: str, user: str) -> dict:  # type: ignore[type-arg]
        response = self.http.post(f"/setup/{session}?userId={user}")
        assert response.status_code == 200, response.text
        return response.json()

    def ws_url(self, setup: dict) -> str:  # type: ignore[type-arg]
        return f"{setup['websocketUrl']}&token={setup['token']}"


@pytest.fixture
def world(gateway_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with FakeAnthropic() as fake:
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("SANDBOX_ROOT", str(tmp_path / "sandboxes"))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_MAX_RETRIES", "1")
        with httpx.Client(base_url=gateway_url, timeout=30) as http:
            yield World(gateway_url, fake, http, tmp_path / "data")
