"""`chalice local` serves the REST API too (REST only: it cannot upgrade websockets), with its
defaults as a newcomer runs it: nothing the app writes restarts it, /setup says where the
WebSocket is served, ./scripts/chat says so in one line, and SIGTERM leaves no mounts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.health import wait_for_health
from tests.support.sandbox_host import free_port
from tests.support.scrubbed_env import scrubbed_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_original_example_flow_under_chalice_local(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SANDBOX_ROOT": str(tmp_path / "sb")}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("chalice")), "local", "--stage", "dev", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(api, proc, timeout=30)
        up = httpx.post(f"{api}/users/alice/skills", json={"name": "debugging.md", "content": "..."})
        assert up.status_code == 200 and up.json()["key"] == "users/alice/skills/debugging.md"
        assert httpx.get(f"{api}/users/alice/skills").json()["skills"] == ["debugging.md"]
        saved = httpx.post(f"{api}/users/alice/conversations", json={"conversationId": "conv-1", "messages": []})
        assert saved.json()["status"] == "saved"
        assert httpx.get(f"{api}/users/alice/conversations/conv-1").json()["conversationId"] == "conv-1"
        assert (tmp_path / "data/users/alice/skills/debugging.md").read_text() == "..."
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if f" {path}/" in line or f" {path} " in line]


def test_chalice_local_with_its_defaults(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    api = f"http://127.0.0.1:{port}"
    # ./scripts/chat installs its lock into .venv first when it never ran: files written under the
    # project, which Chalice's autoreloader rightly restarts on. Done before, as a user's earlier run would.
    subprocess.run(["bash", "-c", "source scripts/lib/bootstrap.sh && ensure_venv requirements-local.txt"], cwd=ROOT,
                   env=scrubbed_env(tmp_path / "install-home"), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("chalice")), "local", "--port", str(port)], cwd=ROOT,
                            env=scrubbed_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_health(api, proc, timeout=60)
        for i in range(10):
            up = httpx.post(f"{api}/users/alice/skills", json={"name": f"notes-{i}.md", "content": f"round {i}"}, timeout=30)
            setup = httpx.post(f"{api}/setup/local-{i}", params={"userId": "alice"}, timeout=60)
            listed = httpx.get(f"{api}/users/alice/skills", timeout=30)
            assert (up.status_code, setup.status_code, listed.status_code) == (200, 200, 200), (up.text, setup.text)
            assert len(listed.json()["skills"]) == i + 1
            assert setup.json()["websocketUrl"] is None and "./scripts/dev" in setup.json()["message"]
        # The store's default is outside the project, where the autoreloader does not look.
        store = home / ".local/share/claude-agent-backend/chalice-local"
        assert (store / "users/alice/skills/notes-9.md").read_text() == "round 9"
        if os.geteuid() == 0:
            assert _mounts_under(store), "the sandboxes' workspaces are tmpfs mounts under the store"
        chat = subprocess.run(["./scripts/chat", "--url", api, "--user", "alice", "hello"], cwd=ROOT,
                              env=scrubbed_env(tmp_path / "chat-home"), capture_output=True, text=True, timeout=300)
        assert chat.returncode == 1 and "Traceback" not in chat.stderr, chat.stderr
        error = [line for line in chat.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "./scripts/dev" in error[0], chat.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=40)
    assert "Restarting local dev server" not in output, output
    deadline = time.monotonic() + 20  # the worker dies with its parent; the leftovers watcher then unmounts
    while (_mounts_under(home) or _serving(port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _mounts_under(home) == [] and not _serving(port)


def _serving(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except ConnectionRefusedError:
        return False
