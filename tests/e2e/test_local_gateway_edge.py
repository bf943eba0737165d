"""What the local gateway refuses before the app runs: a page on another origin (a drive-by),
calls to its AWS API routes that are not the app's own, oversized bodies and frames, paths
Chalice would misread; every refusal is JSON, and no token reaches the log."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.api import ROOT
from tests.support.sandbox_host import free_port

EVIL = "https://evil.example"


def test_a_page_on_another_origin_is_refused_everywhere(world) -> None:  # type: ignore[no-untyped-def]
    preflight = world.http.request("OPTIONS", "/users/alice/skills", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    assert preflight.json()["code"] == "origin_not_allowed" and "CORS_ALLOW_ORIGINS" in preflight.json()["error"]
    # A "simple" request needs no preflight: without the check it would run (and set up a session).
    simple = world.http.post("/setup/drive-by?userId=alice", headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert simple.status_code == 403 and simple.json()["code"] == "origin_not_allowed"
    assert not (world.data_dir / "sessions/drive-by").exists()

    setup = world.setup("sess-origin", "alice")
    with pytest.raises(InvalidStatus) as refused:
        connect(world.ws_url(setup), origin=EVIL)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["code"] == "origin_not_allowed"


def test_the_console_s_own_origin_and_configured_ones_are_allowed(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    own = world.url
    ok = world.http.request("OPTIONS", "/users/alice/skills", headers={"Origin": own, "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == own
    localhost = own.replace("127.0.0.1", "localhost")
    assert world.http.get("/users/alice/skills", headers={"Origin": localhost}).headers["access-control-allow-origin"] == localhost
    setup = world.setup("sess-own", "alice")
    with connect(world.ws_url(setup), origin=own) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({"action": "get_history"}))
        assert json.loads(ws.recv(timeout=10))["event"] == "history"
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", EVIL)
    assert world.http.get("/users/alice/skills", headers={"Origin": EVIL}).status_code == 200
    with connect(world.ws_url(setup), origin=EVIL):  # type: ignore[arg-type]
        pass
    monkeypatch.delenv("CORS_ALLOW_ORIGINS")
    monkeypatch.setenv("API_KEY", "dev-key")  # with a key, any origin may try (it still needs the key)
    keyed = world.http.get("/users/alice/skills", headers={"Origin": EVIL, "Authorization": "Bearer dev-key"})
    assert keyed.status_code == 200 and keyed.headers["access-control-allow-origin"] == "*"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_management_and_invoke_routes_take_only_the_app_s_own_calls(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-mgmt", "alice")
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "get_history"}))
        assert json.loads(ws.recv(timeout=10))["event"] == "history"  # the app's own call got through
        connections = world.http.get  # any connection id: the secret is checked before the id
        forged = connections("/api/@connections/anything")
        assert forged.status_code == 403 and forged.json()["code"] == "not_the_app"
        posted = world.http.post("/api/@connections/anything", content=b'{"event": "forged"}')
        assert posted.status_code == 403 and posted.headers["x-amzn-errortype"] == "ForbiddenException"
        deleted = world.http.delete("/api/@connections/anything")
        assert deleted.status_code == 403
        wrong = world.http.post("/api/@connections/anything", content=b"{}", headers={"X-Local-Gateway-Secret": "guess"})
        assert wrong.status_code == 403
        invoked = world.http.post("/2015-03-31/functions/turn_runner/invocations", json={"sessionId": "sess-mgmt"},
                                  headers={"X-Amz-Invocation-Type": "Event"})
        assert invoked.status_code == 403 and invoked.json()["code"] == "not_the_app"
        ws.send(json.dumps({"action": "get_history"}))
        assert json.loads(ws.recv(timeout=10))["event"] == "history"  # nothing forged arrived in between


def test_a_huge_body_is_refused_without_being_read(world) -> None:  # type: ignore[no-untyped-def]
    declared = _raw_request(world.url, "POST /users/alice/conversations HTTP/1.1", {
        "Content-Type": "application/json", "Content-Length": str(500 * 1024 * 1024)}, body_bytes=0)
    assert declared.startswith(b"HTTP/1.1 413") and b'"code":"body_too_large"' in declared
    before = _rss_bytes()
    streamed = _raw_request(world.url, "POST /users/alice/conversations HTTP/1.1", {
        "Content-Type": "application/json", "Transfer-Encoding": "chunked"}, body_bytes=200 * 1024 * 1024)
    grown = _rss_bytes() - before
    assert streamed.startswith(b"HTTP/1.1 413") and b'"code":"body_too_large"' in streamed
    assert grown < 40 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB reading a refused body"
    for path in ("/api/@connections/x", "/2015-03-31/functions/turn_runner/invocations"):
        capped = world.http.post(path, content=b"x" * (300 * 1024))
        assert capped.status_code in (403, 413)  # refused either way: the secret is checked first
    assert world.http.post("/users/alice/conversations", json={"conversationId": "fits"}).status_code == 200


def test_semicolons_and_odd_paths_get_json_errors(world) -> None:  # type: ignore[no-untyped-def]
    assert world.http.post("/users/a/skills", json={"name": "keep.md", "content": "# Keep\n\nme"}).status_code == 200
    erased = world.http.delete("/users/a;b")
    assert erased.status_code == 400 and erased.json()["code"] == "invalid_path"
    assert world.http.get("/users/a/skills").json()["skills"] == ["keep.md"]
    for method, path in [("GET", "/users/alice%0A/skills"), ("GET", "/nope%0A"), ("GET", "/no/such/route"),
                         ("POST", "/"), ("PUT", "/console/index.html"), ("GET", "/users/a;b/skills"),
                         ("TRACE", "/health")]:
        response = world.http.request(method, path)
        assert response.status_code >= 400 and response.headers["content-type"].startswith("application/json"), (method, path)
        assert set(response.json()) >= {"error", "code"}, (method, path, response.text)


def _raw_request(base: str, request_line: str, headers: dict[str, str], *, body_bytes: int) -> bytes:
    """Send a request over a plain socket, streaming up to `body_bytes` of body until the server
    answers; return what it answered (bounded in bytes and time)."""
    url = urlsplit(base)
    chunked = headers.get("Transfer-Encoding") == "chunked"
    piece = b"x" * 65536
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in {"Host": url.netloc, **headers}.items()) + "\r\n"
        sock.sendall(head.encode())
        sent = 0
        deadline = time.monotonic() + 60
        while sent < body_bytes and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered already
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except OSError:
                break
            sent += len(piece)
        answer = b""
        while len(answer) < 65536 and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
            if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1].rstrip().endswith(b"}"):
                break
        return answer


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb * 1024


@pytest.mark.slow
def test_session_tokens_never_reach_the_access_log(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_GATEWAY_URL", "API_KEY")}
    env |= {"DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb"), "SANDBOX_ALLOW_UNISOLATED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "devserver", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    api = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(api + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        setup = httpx.post(f"{api}/setup/sess-log?userId=alice", timeout=30).json()
        token = setup["token"]
        with connect(f"{setup['websocketUrl']}&token={token}") as ws:
            ws.send(json.dumps({"action": "get_history"}))
            assert json.loads(ws.recv(timeout=10))["event"] == "history"
            ws.send(json.dumps({"action": "message", "prompt": "x" * 200_000}))  # past API Gateway's 128 KB
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
        with pytest.raises(InvalidStatus):  # a refused connection is logged too
            connect(f"{setup['websocketUrl']}&token={token}x")
        # The same parameter spelled otherwise is read as `token` by the server, so it is redacted too.
        with connect(f"{setup['websocketUrl']}&%74oken={token}") as ws:
            ws.send(json.dumps({"action": "get_history"}))
            assert json.loads(ws.recv(timeout=10))["event"] == "history"
        with pytest.raises(InvalidStatus):
            connect(f"{setup['websocketUrl']}&access_token=eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.secret-part")
        # A client cannot choose the address the access log records (no proxy is configured).
        httpx.get(api + "/health", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"}, timeout=10)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert "/ws?sessionId=sess-log&token=[redacted]" in output, output[-2000:]
    assert "&%74oken=[redacted]" in output and "&access_token=[redacted]" in output, output[-2000:]
    assert token not in output and "secret-part" not in output
    assert "6.6.6.6" not in output, output[-2000:]
