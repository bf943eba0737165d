"""REST writes and reads against storage faults injected at the wire (tests/support/fault_proxy.py).

Issue 11 items 6 (a lost response on a conditional write), 11 (a hung endpoint) and 12 (PATCH
without If-Match under contention).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from chalicelib.services.user_settings import UserSettingsService
from chalicelib.storage import PreconditionFailed
from chalicelib.storage.s3 import S3Store, build_s3_client
from tests.support.api import Api, make_api
from tests.support.fault_proxy import FaultProxy, FaultRule
from tests.support.s3 import create_bucket, storage_settings


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def api(proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    """The REST API over S3 through the fault proxy (botocore's own retries left as shipped)."""
    return make_api("s3", tmp_path, monkeypatch, proxy.url)


def _store(endpoint: str, **timeouts: float) -> S3Store:
    settings = storage_settings(endpoint, f"faults-{uuid.uuid4().hex[:10]}").model_copy(update=timeouts)
    create_bucket(settings)
    return S3Store(build_s3_client(settings, boto3.session.Session()), settings.bucket)


# -- item 6: a lost response on a conditional write ------------------------------------------


def test_a_conditional_put_whose_response_was_lost_recognises_its_own_write(proxy: FaultProxy) -> None:
    store = _store(proxy.url)
    proxy.add(FaultRule("PUT", r"/created\.json$", action="drop_after"))
    info = store.put("created.json", b"{}", if_none_match=True)
    assert store.get("created.json").info.etag == info.etag
    assert [s.outcome for s in proxy.seen() if s.method == "PUT" and s.target.endswith("created.json")] == ["drop_after", "forward"]
    proxy.add(FaultRule("PUT", r"/created\.json$", action="drop_after"))
    updated = store.put("created.json", b'{"v": 2}', if_match=info.etag)
    assert store.get("created.json").body == b'{"v": 2}' and updated.etag != info.etag


def test_a_real_conflict_is_still_412(proxy: FaultProxy) -> None:
    store = _store(proxy.url)
    store.put("taken.json", b"first")
    with pytest.raises(PreconditionFailed):
        store.put("taken.json", b"second", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("taken.json", b"second", if_match='"0123456789abcdef0123456789abcdef"')
    assert store.get("taken.json").body == b"first"


def test_patch_settings_with_a_lost_response_answers_200_and_applies_once(api: Api, proxy: FaultProxy) -> None:
    assert api.send("PUT", "/users/ann/settings", {"maxTurns": 3}).status_code == 200
    proxy.add(FaultRule("PUT", r"/settings/preferences\.json$", action="drop_after"))
    r = api.send("PATCH", "/users/ann/settings", {"systemPrompt": "Be brief."})
    assert r.status_code == 200, r.body
    assert proxy.fired("drop_after") == 1
    stored = json.loads(api.raw("users/ann/settings/preferences.json"))
    assert stored["maxTurns"] == 3 and stored["systemPrompt"] == "Be brief."
    assert api.get("/users/ann/settings").headers["ETag"] == r.headers["ETag"]


@pytest.mark.parametrize("path,body,key", [
    ("/users/ann/conversations", {"conversationId": "c1", "messages": []}, r"/conversations/c1\.json$"),
    ("/users/ann/skills", {"name": "a.md", "content": "# A"}, r"/skills/a\.md$"),
])
def test_create_only_post_with_a_lost_response_answers_200(api: Api, proxy: FaultProxy, path: str, body: dict, key: str) -> None:  # type: ignore[type-arg]
    proxy.add(FaultRule("PUT", key, action="drop_after"))
    r = api.post(path, body, headers={"If-None-Match": "*"})
    assert r.status_code == 200, r.body
    assert proxy.fired("drop_after") == 1
    again = api.post(path, body, headers={"If-None-Match": "*"})
    assert again.status_code == 412  # a second request is a real conflict


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_setup_with_a_lost_record_response_is_ready_not_409(api: Api, proxy: FaultProxy) -> None:
    import hashlib

    proxy.add(FaultRule("PUT", r"/sessions/s-lost/session\.json$", action="drop_after"))
    r = api.post("/setup/s-lost?userId=ann")
    assert r.status_code == 200, r.body
    assert proxy.fired("drop_after") == 1
    record = json.loads(api.raw("sessions/s-lost/session.json"))
    assert record["tokenSha256"] == hashlib.sha256(r.json_body["token"].encode()).hexdigest()
    # And once more, refreshing the existing record (If-Match) through the same fault.
    proxy.add(FaultRule("PUT", r"/sessions/s-lost/session\.json$", action="drop_after"))
    again = api.post("/setup/s-lost?userId=ann")
    assert again.status_code == 200, again.body
    assert json.loads(api.raw("sessions/s-lost/session.json"))["tokenSha256"] == hashlib.sha256(again.json_body["token"].encode()).hexdigest()


# -- item 12: PATCH without If-Match under contention -----------------------------------------


def test_concurrent_patches_without_if_match_all_apply(moto_endpoint: str) -> None:
    service = UserSettingsService(_store(moto_endpoint))
    writers = 8
    results: list[object] = [None] * writers
    barrier = threading.Barrier(writers)

    def patch(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = service.patch("zed", {"preferences": {f"k{i}": i}}, None)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results[i] = exc

    threads = [threading.Thread(target=patch, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [type(r).__name__ for r in results if isinstance(r, Exception)] == []
    assert service.get("zed").preferences == {f"k{i}": i for i in range(writers)}


def test_patch_with_if_match_still_answers_412_when_it_changed(api: Api) -> None:
    first = api.send("PUT", "/users/ann/settings", {"maxTurns": 3})
    api.send("PATCH", "/users/ann/settings", {"maxTurns": 4})
    stale = api.send("PATCH", "/users/ann/settings", {"maxTurns": 5}, headers={"If-Match": first.headers["ETag"]})
    assert stale.status_code == 412
    assert json.loads(api.raw("users/ann/settings/preferences.json"))["maxTurns"] == 4


# -- item 11: a hung storage endpoint ---------------------------------------------------------


def test_a_hung_endpoint_is_a_503_with_retry_after_within_the_timeouts(api: Api, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small limits keep the test fast; the defaults' worst case is in the README.
    monkeypatch.setenv("STORAGE_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("STORAGE_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("STORAGE_MAX_ATTEMPTS", "2")
    api.send("PUT", "/users/ann/settings", {"maxTurns": 3})
    proxy.add(FaultRule("*", r"/users/ann/", action="hang", seconds=30, times=None))
    started = time.monotonic()
    r = api.get("/users/ann/settings")
    first = time.monotonic() - started
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.body
    assert r.json_body["code"] == "storage_unavailable" and "did not answer in time" in r.json_body["error"]
    assert 0.9 <= first < 2.5, first  # 2 attempts x 0.5 s, plus backoff
    assert proxy.fired("hang") == 2
    # A second request meanwhile does not wait again: storage is known to hang.
    started = time.monotonic()
    r = api.send("PATCH", "/users/ann/settings", {"maxTurns": 4})
    assert r.status_code == 503 and time.monotonic() - started < 0.4
    assert proxy.fired("hang") == 2
    proxy.clear()
