"""Fixtures for API tests: the app over each storage backend."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import ROOT, Api, make_api
from tests.support.fault_proxy import FaultProxy
from tests.support.lambda_ws import lambda_harness

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(params=["local", "s3"])
def api(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The REST API over the embedded store, then over S3 (moto server over HTTP)."""
    endpoint = request.getfixturevalue("moto_endpoint") if request.param == "s3" else None
    yield make_api(request.param, tmp_path, monkeypatch, endpoint)


@pytest.fixture
def local_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The REST API over the embedded store only (for tests about the edge, not storage)."""
    yield make_api("local", tmp_path, monkeypatch, None)


@pytest.fixture
def faulty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> Iterator[tuple[Any, ...]]:
    """The websocket handlers (Lambda harness) and the REST API over S3 behind a fault proxy:
    (client, management, fake model, dispatcher, proxy, api)."""
    with FaultProxy(moto_endpoint) as proxy:
        api = make_api("s3", tmp_path, monkeypatch, proxy.url)
        with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
            yield client, management, fake, dispatcher, proxy, api
