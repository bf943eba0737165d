"""Storage operations of a websocket session, counted with botocore event hooks and pinned.

The REST endpoints are pinned in test_storage_ops.py; this pins what a chat costs: connect,
a turn with one model reply, a turn with a tool call, disconnect. The state poller is set to
tick once an hour and the lease to last 15 minutes here, so they add nothing; in production
they add one HeadObject per TURN_POLL_SECONDS (the body is read only when the state changed)
and one PutObject (the lease renewal, conditional on the state as last known) per
TURN_LEASE_SECONDS / 3 while a turn runs. The README's cost figures for turns come from TURN_OPS.
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
BASE = {"GetObject connection": 1, "GetObject state": 1, "PutObject state": 2, "GetObject settings": 1,
        "GetObject conversation": 1, "PutObject usage": 1}
TURN_OPS: dict[str, dict[str, int]] = {
    "$connect": {"GetObject session": 1, "PutObject connection": 1, "GetObject state": 1, "PutObject state": 1},
    # The edge reads the connection and the state at once (the frame names its session), and one
    # conditional write queues the message and claims the turn for the runner it starts (handoff:
    # the runner neither reads nor writes the state to start). The runner reads the conversation
    # and the settings at once (and, the first time this process runs the session, the session
    # record's skill index), saves the conversation once (prompt and reply together), meters the
    # turn with one blind PutObject of its own usage record, and records the end of the turn with
    # its events in one conditional write of the state. No tool ran: no workspace snapshot.
    "message → turn with one model reply": {**BASE, "GetObject session": 1, "PutObject conversation": 1},
    "message → another turn with one model reply": {**BASE, "PutObject conversation": 1},
    # + the tool call and its result saved, each with the events so far (event log); the
    # workspace check after a turn that ran a tool (the session's first: its sandbox's first save
    # of an empty workspace deletes any archive of the earlier layout, free on R2)
    "message → turn with a tool call (two model replies)": {
        **BASE, "PutObject conversation": 3, "PutObject event log": 2, "HeadObject workspace": 1,
        "DeleteObjects workspace": 1,
    },
    # each further tool call: its result and the next reply, each saved with its events; the
    # previous turn's log (it wrote one) pruned
    "message → turn with two tool calls (three model replies)": {
        **BASE, "PutObject conversation": 5, "PutObject event log": 4, "HeadObject workspace": 1,
        "ListObjectsV2 event log": 1, "DeleteObjects event log": 1,
    },
    # The workspace snapshot after a turn (the tests above: nothing changed, so only its root's
    # HEAD): when files changed, a pack of the changed files and the manifest segment holding them
    # ("workspace object"), then the root; the first time also the owner marker DELETE /users/{u}
    # finds it by (and the earlier layout's archive deleted), afterwards the objects the new root
    # no longer references deleted. Class A per turn for the workspace: three when files changed.
    "message → turn whose tool writes a file (first snapshot)": {
        **BASE, "PutObject conversation": 3, "PutObject event log": 2, "HeadObject workspace": 1,
        "ListObjectsV2 event log": 1, "DeleteObjects event log": 1, "PutObject workspace object": 2, "PutObject workspace": 1,
        "PutObject workspace marker": 1, "DeleteObjects workspace": 1,
    },
    "message → turn whose tool changes a file": {
        **BASE, "PutObject conversation": 3, "PutObject event log": 2, "HeadObject workspace": 1,
        "ListObjectsV2 event log": 1, "DeleteObjects event log": 1, "PutObject workspace object": 2, "PutObject workspace": 1,
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
            client.lambda_.invoke("ws_message", ws_event("$default", "c1", json.dumps(
                {"action": "message", "prompt": "go", "sessionId": "ops"})))
            management.wait_for("c1", "result")
            dispatcher.join(30)

        measure("message → turn with one model reply", lambda: turn(Reply([Text("hello there", chunks=4)])))
        measure("message → another turn with one model reply", lambda: turn(Reply([Text("hello again", chunks=4)])))
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
    plain = seen["message → another turn with one model reply"]
    assert sum(n for op, n in plain.items() if op.split()[0] in CLASS_A) <= 4
    assert sum(n for op, n in plain.items() if op.split()[0] in CLASS_B) <= 4
