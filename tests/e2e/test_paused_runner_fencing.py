"""Issue 21, row 1: a runner paused past its lease (SIGSTOP: a GC pause, a frozen container, a
VM migration) while a second server takes the session over, then resumed (SIGCONT).

Two real ./scripts/dev processes share one store (the local DATA_DIR, or S3 through moto's
server). The first is stopped inside a tool call of message m1; the client moves to the second,
which waits the lease out, repairs m1's turn and answers m2 and m3. Then the first wakes up with
its old copy of the conversation. Fencing must refuse every write it makes under the lease it
lost: the stored conversation holds m1 (its call answered as cut off), m2 and m3, each once,
and nothing of what the stale runner said after waking. Its log says it lost the lease.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from websockets.sync.client import connect

from chalicelib.storage.s3 import build_s3_client
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text, ToolUse
from tests.support.dev_server import devserver
from tests.support.gateway import receive_until
from tests.support.s3 import create_bucket, moto_server, storage_settings
from tests.support.sandbox_host import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

LEASE_SECONDS = 3


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        if texts:
            return texts[-1]
        return "<tool_result>"
    return ""


def model(body: dict[str, Any]) -> Reply:
    """m1 runs a slow tool; after its result (only the paused runner gets one) the reply is LATE."""
    last = _last_user_text(body)
    if last == "m1":
        return Reply([Text("Running the m1 job."), ToolUse("bash", {"command": "sleep 3; echo m1-tool-done"})])
    if last == "<tool_result>":
        return Reply([Text("LATE answer of the paused runner")])
    return Reply([Text(f"answer to {last}")])


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment both servers share: one DATA_DIR, or one bucket on a moto server."""
    if request.param == "local":
        yield {"DATA_DIR": str(tmp_path / "data")}
        return
    with moto_server() as endpoint:
        bucket = f"fence-{uuid.uuid4().hex[:10]}"
        create_bucket(storage_settings(endpoint, bucket))
        yield {"STORAGE_BACKEND": "s3", "S3_ENDPOINT_URL": endpoint, "R2_BUCKET": bucket, "S3_REGION": "auto",
               "R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing", "DATA_DIR": str(tmp_path / "data")}


def read_conversation(store_env: dict[str, str], session: str) -> dict[str, Any]:
    """The stored conversation, read straight from the store both servers used."""
    if "S3_ENDPOINT_URL" not in store_env:
        return json.loads((Path(store_env["DATA_DIR"]) / f"users/alice/conversations/{session}.json").read_text())
    s3 = build_s3_client(storage_settings(store_env["S3_ENDPOINT_URL"], store_env["R2_BUCKET"]), boto3.session.Session())
    body = s3.get_object(Bucket=store_env["R2_BUCKET"], Key=f"users/alice/conversations/{session}.json")["Body"].read()
    return json.loads(body)


def test_a_runner_paused_past_its_lease_loses_every_write(tmp_path: Path, store_env: dict[str, str]) -> None:
    ports = [free_port(), free_port()]
    with FakeAnthropic() as fake, ExitStack() as stack:
        fake.script(*([model] * 12))
        servers = []
        for n, port in enumerate(ports):
            env = {
                "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
                "SANDBOX_ROOT": str(tmp_path / f"sb{n}"), "TURN_LEASE_SECONDS": str(LEASE_SECONDS),
                "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_MAX_RETRIES": "0",
                **store_env,
            }
            servers.append(stack.enter_context(devserver(port, env, tmp_path / f"dev{n}.log")))
        first, _ = servers
        # Each server looks for turns to resume once it is up; let that pass before m1 is queued,
        # or the second one could pick m1 up from its boot scan.
        for n, port in enumerate(ports):
            for _ in range(100):  # bounded: 10 s
                if f"GET http://127.0.0.1:{port}/health" in (tmp_path / f"dev{n}.log").read_text():
                    break
                time.sleep(0.1)
        time.sleep(1.5)
        api = [f"http://127.0.0.1:{p}" for p in ports]
        setup = httpx.post(f"{api[0]}/setup/sess-pause?userId=alice", timeout=30).json()
        ws_url = [f"{setup['websocketUrl']}&token={setup['token']}".replace(f":{ports[0]}/", f":{p}/") for p in ports]
        with connect(ws_url[0], close_timeout=0.2) as ws1:  # its server will not answer the close
            ws1.send(json.dumps({"action": "message", "prompt": "m1"}))
            receive_until(ws1, "tool_use", timeout=30)
            time.sleep(0.5)  # the tool call runs in the sandbox now
            os.killpg(first.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
        try:
            with connect(ws_url[1]) as ws2:
                ws2.send(json.dumps({"action": "message", "prompt": "m2"}))
                taken_over = receive_until(ws2, "result", timeout=60)  # m1's repair ends with a result
                if not any(f["event"] == "stream" and "answer to m2" in f.get("content", "") for f in taken_over):
                    taken_over += receive_until(ws2, "result", timeout=60)
                answered_m2 = time.monotonic() - stopped_at
                ws2.send(json.dumps({"action": "message", "prompt": "m3"}))
                receive_until(ws2, "result", timeout=60)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        # The paused runner wakes up with m1's tool still running: give it time to try its writes.
        log0 = tmp_path / "dev0.log"
        for _ in range(200):  # bounded: 20 s
            if "lost its lease" in log0.read_text():
                break
            time.sleep(0.1)
        time.sleep(LEASE_SECONDS)
        with connect(ws_url[1]) as ws2:
            ws2.send(json.dumps({"action": "message", "prompt": "m4"}))
            receive_until(ws2, "result", timeout=60)

    print(f"\nm2 answered {answered_m2:.1f} s after SIGSTOP (lease {LEASE_SECONDS} s)")
    body = read_conversation(store_env, "sess-pause")
    texts = json.dumps(body["messages"])
    assert "LATE answer" not in texts, body["messages"]
    prompts = [_last_user_text({"messages": [m]}) for m in body["messages"] if m["role"] == "user"
               and _last_user_text({"messages": [m]}) != "<tool_result>"]
    assert prompts == ["m1", "m2", "m3", "m4"], body["messages"]
    for name in ("m2", "m3", "m4"):
        assert texts.count(f"answer to {name}") == 1, body["messages"]
    calls = [b["id"] for m in body["messages"] if m["role"] == "assistant" and isinstance(m["content"], list)
             for b in m["content"] if b["type"] == "tool_use"]
    answers = [b["tool_use_id"] for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
               for b in m["content"] if b["type"] == "tool_result"]
    assert len(calls) == 1 and calls == answers, body["messages"]
    results = [b["content"] for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
               for b in m["content"] if b["type"] == "tool_result"]
    assert len(results) == 1 and "cut off" in results[0]  # the new owner's repair, not the stale runner's result
    # The stale runner tried to write, was refused, stopped, and said so.
    log_text = log0.read_text()
    assert "lost its lease" in log_text, log_text[-4000:]
