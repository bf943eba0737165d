"""The sandbox host's own behaviour: auth, idle reaping, destroy, errors."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from chalicelib.config import Settings
from tests.support.sandbox_host import running_sandbox_host, serve

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_auth(tmp_path: Path) -> None:
    with running_sandbox_host(tmp_path) as (url, token):
        assert httpx.get(url + "/health").json()["status"] == "healthy"
        none = httpx.post(url + "/sessions/s1", json={})
        assert none.status_code == 401 and none.json()["code"] == "unauthorized"
        wrong = httpx.post(url + "/sessions/s1", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = httpx.post(url + "/sessions/s1", json={}, headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200 and right.json() == {"sessionId": "s1"}


def test_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    from sandbox_host.server import create_app

    with pytest.raises(SystemExit, match="SANDBOX_TOKEN"):
        create_app(Settings.from_env({"SANDBOX_ROOT": str(tmp_path)}))


def test_idle_sessions_are_reaped(tmp_path: Path) -> None:
    from sandbox_host.server import create_app

    app = create_app(Settings.from_env({"SANDBOX_ROOT": str(tmp_path), "SANDBOX_TOKEN": "t", "SANDBOX_IDLE_TIMEOUT": "60"}))
    host = app.state.host
    with serve(app) as url:
        auth = {"Authorization": "Bearer t"}
        httpx.post(url + "/sessions/idle", json={}, headers=auth)
        httpx.post(url + "/sessions/busy", json={}, headers=auth)
        assert host.reap_idle(now=time.monotonic() + 30) == []
        httpx.post(url + "/sessions/busy/exec", json={"command": "true"}, headers=auth)
        host.last_used["busy"] = time.monotonic() + 50  # used recently, relative to the clock below
        assert host.reap_idle(now=time.monotonic() + 61) == ["idle"]
        gone = httpx.post(url + "/sessions/idle/exec", json={"command": "true"}, headers=auth)
        assert gone.status_code == 404 and gone.json()["code"] == "sandbox_gone"
        assert httpx.get(url + "/sessions/busy", headers=auth).status_code == 200


def test_destroy_and_errors(tmp_path: Path) -> None:
    with running_sandbox_host(tmp_path) as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(url + "/sessions/d1", json={}, headers=auth)
        assert httpx.delete(url + "/sessions/d1", headers=auth).json()["destroyed"] is True
        again = httpx.delete(url + "/sessions/d1", headers=auth)
        assert again.status_code == 404 and set(again.json()) == {"error", "code"}
        httpx.post(url + "/sessions/d2", json={}, headers=auth)
        bad = httpx.put(url + "/sessions/d2/files", json={"files": {"/etc/passwd": "eA=="}}, headers=auth)
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_path"
        junk = httpx.post(url + "/sessions/d2/exec", content=b"not json", headers=auth)
        assert junk.status_code == 400
        badid = httpx.post(url + "/sessions/..%2Fx", json={}, headers=auth)
        assert badid.status_code in (400, 404)
