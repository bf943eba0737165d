"""Placement over a fleet of sandbox hosts: fewest sessions wins, a host that does not answer
or drains is skipped, and with no host left the error names each one and why."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxGone, SandboxOptions, SandboxUnavailable
from chalicelib.sandbox.fleet import FleetSandboxProvider
from tests.support.sandbox_host import free_port, running_sandbox_host

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def test_placement_routing_and_drain(tmp_path: Path) -> None:
    with running_sandbox_host(tmp_path / "a") as (busy, token), \
            running_sandbox_host(tmp_path / "b", SANDBOX_TOKEN=token) as (idle, _):
        down = f"http://127.0.0.1:{free_port()}"
        auth = {"Authorization": f"Bearer {token}"}
        for sid in ("x1", "x2"):
            assert httpx.post(f"{busy}/sessions/{sid}", json={}, headers=auth).status_code == 200
        placed: dict[str, str] = {}
        fleet = FleetSandboxProvider(Settings.from_env({"SANDBOX_URL": f"{down},{busy},{idle}", "SANDBOX_TOKEN": token}),
                                     resolve_host=placed.get)
        report = {h.url: h for h in fleet.health()}
        assert not report[down].up and "no answer" in (report[down].problem or "")
        assert report[busy].sessions == 2 and report[idle].sessions == 0

        sandbox = fleet.create("s1", SandboxOptions())
        assert sandbox.host == idle
        placed["s1"] = sandbox.host
        # Another process (a fresh provider) routes by the record.
        other = FleetSandboxProvider(Settings.from_env({"SANDBOX_URL": f"{down},{busy},{idle}", "SANDBOX_TOKEN": token}),
                                     resolve_host=placed.get)
        assert other.get("s1").exec("echo routed").stdout == "routed\n"
        assert httpx.get(f"{idle}/health").json()["sessions"] == 1

        # The idle host drains: it takes no new session, and s1 is gone from it at its next use.
        assert httpx.post(f"{idle}/admin/drain", json={"draining": True}, headers=auth).json()["draining"] is True
        assert httpx.post(f"{idle}/admin/drain", json={"draining": True}).status_code == 401
        assert fleet.create("s2", SandboxOptions()).host == busy
        with pytest.raises(SandboxGone, match="draining"):
            other.get("s1")
        assert httpx.get(f"{idle}/health").json()["sessions"] == 0  # ended there, so nothing stale answers
        assert other.create("s1", SandboxOptions()).host == busy

        assert httpx.post(f"{busy}/admin/drain", json={"draining": True}, headers=auth).status_code == 200
        with pytest.raises(SandboxUnavailable) as refused:
            fleet.create("s3", SandboxOptions())
        message = str(refused.value)
        assert down in message and "no answer" in message and f"{busy}: draining" in message


def test_archive_routes_refuse_hostile_archives_and_say_unchanged(tmp_path: Path) -> None:
    import io
    import tarfile

    from chalicelib.sandbox.base import SandboxPathError

    with running_sandbox_host(tmp_path / "h") as (url, token):
        fleet = FleetSandboxProvider(Settings.from_env({"SANDBOX_URL": url, "SANDBOX_TOKEN": token}))
        box = fleet.create("arch", SandboxOptions())
        assert box.exec("mkdir -p d && echo x > d/f && ln -s /etc d/etc").exit_code == 0
        data = box.export_workspace(2**20)
        assert data is not None
        md5 = __import__("hashlib").md5(data).hexdigest()
        assert box.export_workspace(2**20, md5) is None  # nothing changed: 204, nothing compressed
        assert box.exec("echo y > d/f2").exit_code == 0
        assert box.export_workspace(2**20, md5) is not None
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            link = tarfile.TarInfo("esc")
            link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
            tar.addfile(link)
            planted = tarfile.TarInfo("esc/planted")
            planted.size = 1
            tar.addfile(planted, io.BytesIO(b"x"))
        with pytest.raises(SandboxPathError):
            box.import_workspace(out.getvalue(), 2**20)
        assert not (tmp_path / "planted").exists()
        assert box.import_workspace(data, 2**20) == 1
        assert box.exec("cat d/f; readlink d/etc; ls d").stdout == "x\n/etc\netc\nf\n"
        raw = httpx.get(f"{url}/sessions/arch/archive", params={"maxBytes": "10"}, headers={"Authorization": f"Bearer {token}"})
        assert raw.status_code == 413 and raw.json()["code"] == "snapshot_too_large"


def test_setup_reads_the_session_record_once(tmp_path: Path) -> None:
    """The fleet routes by the session record, which setup has just read: it asks no second time
    (that read was one storage round trip more on setup's critical path)."""
    from collections import Counter

    from chalicelib.services.sessions import SessionsService
    from chalicelib.storage import layout
    from chalicelib.storage.base import StoredObject
    from chalicelib.storage.local import LocalDirectoryStore

    reads: Counter[str] = Counter()

    class CountingStore(LocalDirectoryStore):
        def get(self, key: str) -> StoredObject:
            reads[key] += 1
            return super().get(key)

    with running_sandbox_host(tmp_path / "h") as (url, token):
        settings = Settings.from_env({"SANDBOX_URL": url, "SANDBOX_TOKEN": token, "DATA_DIR": str(tmp_path / "data")})
        store = CountingStore(tmp_path / "data")
        store.put("users/u/skills/a.md", b"# A\n\nDo a.")
        hosts = []
        for _ in range(2):  # a new session, then its refresh by another process (nothing in memory)
            service = SessionsService(settings, store, FleetSandboxProvider(
                settings, resolve_host=lambda sid: service.host_of(sid)))  # noqa: B023 - as the container wires it
            before = reads[layout.session_key("s1")]
            assert service.setup("s1", "u", "ws://127.0.0.1/ws").skills_loaded == ["/workspace/.claude/skills/a.md"]
            assert reads[layout.session_key("s1")] - before == 1
            hosts.append(service.get_record("s1").sandbox_host)
        assert hosts == [url, url]
        # Outside setup the fleet still reads the record (another process may have moved it).
        before = reads[layout.session_key("s1")]
        assert service.host_of("s1") == url and reads[layout.session_key("s1")] == before + 1
