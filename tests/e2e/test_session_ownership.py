"""Issue 23's race: a session id must not change hands while its turn still runs.

Before: `DELETE /sandbox/race1` two seconds into Alice's turn answered 200, the turn recreated
the sandbox behind the delete (`sandbox_recreated`), and Bob's `POST /setup/race1?userId=bob`
answered 200 with Alice's live sandbox and files.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import pytest
from websockets.sync.client import connect

from chalicelib.config import current_settings
from chalicelib.container import get_container
from chalicelib.sandbox.base import SandboxGone
from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_destroy_during_a_turn_stops_it_and_the_id_does_not_change_hands(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_TOKEN_SECRET", "user-token-secret-for-tests-0123456789")
    setup = world.setup("race1", "alice")
    for name in ("one.txt", "two.txt"):
        put = world.http.put(f"/sessions/race1/files/content?path={name}", content=f"alice's {name}".encode())
        assert put.status_code == 200, put.text
    world.fake.script(
        Reply([ToolUse("bash", {"command": "sleep 4"})]),
        Reply([ToolUse("bash", {"command": "echo written-after-the-delete > /workspace/late.txt"})]),
        Reply([Text("done")]),
    )
    with connect(world.ws_url(setup)) as ws:
        ws.send(json.dumps({"action": "message", "prompt": "sleep, then write a file"}))
        frames = receive_until(ws, "tool_use")
        time.sleep(2)  # two seconds into `sleep 4`
        destroyed = world.http.delete("/sandbox/race1")
        assert destroyed.status_code == 200, destroyed.text
        taken = world.http.post("/setup/race1?userId=bob")
        assert taken.status_code == 409 and taken.json()["code"] == "session_owned_by_another_user", taken.text
        frames += receive_until(ws, "result", timeout=60)
    statuses = [f.get("status") for f in frames if f["event"] == "status"]
    assert "sandbox_recreated" not in statuses, statuses
    # The turn stops at its next step: interrupted (its watcher saw the session go), or refused a
    # new sandbox (`session_destroyed`). The write after the sleep never runs.
    stopped = frames[-1]["interrupted"] or any(f["event"] == "error" and f["code"] == "session_destroyed" for f in frames)
    assert stopped, [(f["event"], f.get("code"), f.get("status")) for f in frames]
    ran = [f for f in frames if f["event"] == "tool_result" and "late" in json.dumps(f) and not f.get("is_error")]
    assert not ran, ran
    # Nothing was made again behind the delete, and the id is still Alice's.
    with pytest.raises(SandboxGone):
        get_container(current_settings()).sandboxes.get("race1")
    again = world.http.post("/setup/race1?userId=bob")
    assert again.status_code == 409 and again.json()["code"] == "session_owned_by_another_user"
    bob = world.http.post("/users/bob/tokens").json()["token"]
    refused = world.http.get("/sessions/race1/files", headers={"Authorization": f"Bearer {bob}"})
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden_user"
    listed = [f["path"] for f in world.http.get("/sessions/race1/files").json()["files"]]
    assert "/workspace/one.txt" in listed and "/workspace/late.txt" not in listed
