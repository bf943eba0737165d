"""Storage operations of a websocket session, counted with botocore event hooks and pinned.

The REST endpoints are pinned in test_storage_ops.py; this pins what a chat costs: connect,
a turn with one model reply, a turn with a tool call, disconnect. The state poller is set to
tick once an hour and the lease to last 15 minutes here, so they add nothing; in production
they add one GetObject per TURN_POLL_SECONDS and one GetObject + PutObject (the lease renewal)
per TURN_LEASE_SECONDS / 3 while a turn runs. The README's cost figures for turns come from TURN_OPS.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.container import get_container
from tests.fakes.fake_anthropic import Reply, Text, ToolUse
from tests.support.api import ROOT, make_api
from tests.support.lambda_ws import lambda_harness, setup_session, ws_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

# step → {"Operation kind-of-object": count}
TURN_OPS: dict[str, dict[str, int]] = {
    "$connect": {"GetObject session": 1, "PutObject connection": 1, "GetObject state": 1, "PutObject state": 1},
    # queue, claim, finish (state); the prompt and the reply (conversation), each with its
    # events (event log), then a final flush; the listing that prunes older turns' logs; the
    # day's usage metered (one conditional read-modify-write per turn). Before the writes that are
    # not conditional on the state (the snapshot, the last events), one read of the state checks
    # that the turn still holds its lease (fencing, issue 21).
    "message → turn with one model reply": {
        "GetObject connection": 1, "GetObject state": 5, "PutObject state": 4, "GetObject conversation": 1,
        "GetObject settings": 1, "GetObject usage": 1, "PutObject usage": 1, "PutObject conversation": 2, "PutObject event log": 3, "ListObjectsV2 event log": 1,
        # the snapshot root's HEAD; the sandbox's first save of an empty workspace deletes any
        # archive of the earlier layout (free on R2), later ones know it empty and skip that
        "HeadObject workspace": 1, "DeleteObjects workspace": 1,
    },
    # + the tool result and the second reply, each saved with its events; the previous turn's log pruned
    "message → turn with a tool call (two model replies)": {
        "GetObject connection": 1, "GetObject state": 5, "PutObject state": 4, "GetObject conversation": 1,
        "GetObject settings": 1, "GetObject usage": 1, "PutObject usage": 1, "PutObject conversation": 4, "PutObject event log": 5, "ListObjectsV2 event log": 1,
        "DeleteObjects event log": 1, "HeadObject workspace": 1,
    },
    # each further tool call: its result and the next reply, each saved with its events
    "message → turn with two tool calls (three model replies)": {
        "GetObject connection": 1, "GetObject state": 5, "PutObject state": 4, "GetObject conversation": 1,
        "GetObject settings": 1, "GetObject usage": 1, "PutObject usage": 1, "PutObject conversation": 6, "PutObject event log": 7, "ListObjectsV2 event log": 1,
        "DeleteObjects event log": 1, "HeadObject workspace": 1,
    },
    # The workspace snapshot after a turn (tests above: nothing changed, so only its root's HEAD):
    # when files changed, a pack of the changed files and the manifest segment holding them
    # ("workspace object"), then the root; the first time also the owner marker DELETE /users/{u}
    # finds it by (and the earlier layout's archive deleted), afterwards the objects the new root
    # no longer references deleted. Class A per turn for the workspace: three when files changed.
    "message → turn whose tool writes a file (first snapshot)": {
        "GetObject connection": 1, "GetObject state": 5, "PutObject state": 4, "GetObject conversation": 1,
        "GetObject settings": 1, "GetObject usage": 1, "PutObject usage": 1, "PutObject conversation": 4, "PutObject event log": 5, "ListObjectsV2 event log": 1,
        "DeleteObjects event log": 1, "HeadObject workspace": 1, "PutObject workspace object": 2, "PutObject workspace": 1,
        "PutObject workspace marker": 1, "DeleteObjects workspace": 1,
    },
    "message → turn whose tool changes a file": {
        "GetObject connection": 1, "GetObject state": 5, "PutObject state": 4, "GetObject conversation": 1,
        "GetObject settings": 1, "GetObject usage": 1, "PutObject usage": 1, "PutObject conversation": 4, "PutObject event log": 5, "ListObjectsV2 event log": 1,
        "DeleteObjects event log": 1, "HeadObject workspace": 1, "PutObject workspace object": 2, "PutObject workspace": 1,
        "DeleteObjects workspace object": 1,
    },
    "$disconnect": {"GetObject connection": 1, "DeleteObject connection": 1, "GetObject state": 1, "PutObject state": 1},
}

CLASS_A = {"PutObject", "ListObjectsV2"}
CLASS_B = {"GetObject", "HeadObject"}


def kind(key: str) -> str:
    parts = key.split("/")
    if parts[0] == "connections":
        return "connection"
    if parts[0] == "workspace-owners":
        return "workspace marker"
    if parts[0] == "sessions" and len(parts) > 3 and parts[2] == "workspace":
        return "workspace object" if len(parts) > 4 else "workspace"
    if parts[0] == "sessions":
        return {"session.json": "session", "state.json": "state"}.get(parts[-1], "event log")
    section = parts[2] if len(parts) > 2 else key
    return {"skills": "skills", "conversations": "conversation", "settings": "settings", "cache": "bundle"}.get(section, section)


def test_storage_operations_of_a_chat_are_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    monkeypatch.setenv("TURN_POLL_SECONDS", "3600")
    monkeypatch.setenv("TURN_LEASE_SECONDS", "900")  # lease renewals (one PutObject state each) excluded too
    api = make_api("s3", tmp_path, monkeypatch, moto_endpoint)
    with lambda_harness(tmp_path, monkeypatch) as (client, management, fake, dispatcher):
        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        store = get_container(Settings.from_env({**os.environ, **stage_env})).store
        counts: Counter[str] = Counter()

        def count(params: dict[str, Any], model: Any, **_: Any) -> None:
            objects = params.get("Delete", {}).get("Objects") or [{}]
            target = params.get("Key") or params.get("Prefix") or objects[0].get("Key", "")
            counts[f"{model.name} {kind(target)}"] += 1

        store.client.meta.events.register("before-parameter-build.s3", count)  # type: ignore[attr-defined]
        api.post("/users/alice/skills", {"name": "notes.md", "content": "# Notes\n\nRead me."})
        token = setup_session(client, "ops")
        seen: dict[str, dict[str, int]] = {}

        def measure(step: str, action: Any) -> None:
            counts.clear()
            action()
            seen[step] = dict(counts)

        measure("$connect", lambda: client.lambda_.invoke(
            "ws_connect", ws_event("$connect", "c1", query={"sessionId": "ops", "token": token})))

        def turn(*replies: Reply) -> None:
            management.sent.clear()
            fake.script(*replies)
            client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps({"action": "message", "prompt": "go"})))
            management.wait_for("c1", "result")
            dispatcher.join(30)

        measure("message → turn with one model reply", lambda: turn(Reply([Text("hello there", chunks=4)])))
        measure("message → turn with a tool call (two model replies)", lambda: turn(
            Reply([ToolUse("bash", {"command": "echo hi"})]), Reply([Text("done")])))
        measure("message → turn with two tool calls (three model replies)", lambda: turn(
            Reply([ToolUse("bash", {"command": "echo one"})]), Reply([ToolUse("bash", {"command": "echo two"})]), Reply([Text("done")])))
        measure("message → turn whose tool writes a file (first snapshot)", lambda: turn(
            Reply([ToolUse("bash", {"command": "echo one > notes.txt"})]), Reply([Text("done")])))
        measure("message → turn whose tool changes a file", lambda: turn(
            Reply([ToolUse("bash", {"command": "echo two > notes.txt"})]), Reply([Text("done")])))
        measure("$disconnect", lambda: client.lambda_.invoke("ws_disconnect", ws_event("$disconnect", "c1")))

    print("\nS3 operations of a chat (poller excluded):")
    for step, ops in seen.items():
        a = sum(n for op, n in ops.items() if op.split()[0] in CLASS_A)
        b = sum(n for op, n in ops.items() if op.split()[0] in CLASS_B)
        print(f"  {step:55s} A={a} B={b}  {ops}")
    assert seen == TURN_OPS
