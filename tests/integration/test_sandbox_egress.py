"""Network-on sandboxes: their own namespace, and the egress proxy as the only way out.

Issue 24's attacks, each against a real bubblewrap sandbox with `allowNetwork: true`: the
host's loopback listeners, a host abstract unix socket and another sandbox's listener are out
of reach, directly and through the proxy. The one upstream a test reaches is on loopback, and
only through the address guard's explicit test exemption (the first test shows it is needed).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxOptions
from chalicelib.sandbox.bwrap import LocalSandboxProvider
from chalicelib.sandbox.egress_policy import AddressGuard

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace per sandbox needs root"),
]
NET_ON = SandboxOptions(allow_network=True)
# The proxy variables' NO_PROXY names 127.0.0.1 (the sandbox's own loopback): these probes
# override it to put a loopback target through the proxy on purpose.
VIA_PROXY = "curl --noproxy '' -sS -m 10"


class Listener:
    """A TCP server on the host's loopback that hands out a secret and records who came."""

    def __init__(self, secret: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._secret = secret
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                except OSError:
                    pass
                body = self._secret
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def metadata() -> Iterator[Listener]:
    # A stand-in for a cloud metadata service: what the agent fetched in the issue.
    served = Listener(b'{"AccessKeyId": "ASIA-FAKE-7719", "SecretAccessKey": "fake-secret-7719"}')
    yield served
    served.close()


def _provider(tmp_path: Path, name: str, **kwargs: object) -> LocalSandboxProvider:
    return LocalSandboxProvider(Settings.from_env({"SANDBOX_ROOT": str(tmp_path / name), "SANDBOX_CPU_SECONDS": "5"}),
                                **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalSandboxProvider]:
    p = _provider(tmp_path, "sandboxes")
    yield p
    for sid in p.sessions():
        p.destroy(sid)


def test_an_upstream_is_reached_through_the_proxy_only_with_the_test_exemption(tmp_path: Path, metadata: Listener) -> None:
    exempt = _provider(tmp_path, "exempt", egress_guard=AddressGuard(exempt=(ipaddress.ip_network("127.0.0.1/32"),)))
    plain = _provider(tmp_path, "plain")
    try:
        url = f"http://127.0.0.1:{metadata.port}/"
        probe = (f"{VIA_PROXY} {url}; echo; {VIA_PROXY} -p {url}; echo; "
                 f"{VIA_PROXY} -x socks5h://127.0.0.1:1080 {url}; echo; env | grep -c _PROXY=")
        reached = exempt.create("n1", NET_ON).exec(probe, timeout=60)
        assert reached.stdout.count("ASIA-FAKE-7719") == 3, reached  # HTTP, CONNECT and SOCKS5
        assert metadata.accepted == 3
        refused = plain.create("n1", NET_ON).exec(probe, timeout=60)
        assert "ASIA-FAKE-7719" not in refused.stdout
        assert "egress proxy: 127.0.0.1 is a loopback address" in refused.stdout, refused
        assert metadata.accepted == 3
    finally:
        for p in (exempt, plain):
            for sid in p.sessions():
                p.destroy(sid)


def test_the_hosts_loopback_is_out_of_reach(provider: LocalSandboxProvider, metadata: Listener) -> None:
    sandbox = provider.create("net-on", NET_ON)
    url = f"http://127.0.0.1:{metadata.port}/latest/meta-data/iam/security-credentials/role"
    raw = (f"python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', {metadata.port}), timeout=3); "
           "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(999))\"")
    result = sandbox.exec(f"curl -sS -m 5 {url}; {VIA_PROXY} {url}; {raw} 2>&1", timeout=60)
    assert "ASIA-FAKE-7719" not in result.stdout + result.stderr
    assert "loopback address" in result.stdout and "Connection refused" in result.stdout + result.stderr, result
    assert sandbox.bash().run(f"curl -sS -m 5 {url}; {VIA_PROXY} {url}").stdout.count("ASIA-FAKE") == 0
    assert metadata.accepted == 0


def test_a_host_abstract_unix_socket_is_out_of_reach(provider: LocalSandboxProvider) -> None:
    name = f"\0egress-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(4)
    server.settimeout(0.2)
    got: list[bool] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            got.append(True)
            with conn:
                conn.sendall(b"ABSTRACT-SECRET-4410")

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        probe = ("python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); "
                 f"s.connect('\\0egress-test-{os.getpid()}'); print(s.recv(99))\" 2>&1")
        result = provider.create("net-on", NET_ON).exec(probe, timeout=30)
        assert "ABSTRACT-SECRET" not in result.stdout and "Connection refused" in result.stdout, result
        assert got == []
    finally:
        stop.set()
        worker.join(timeout=5)
        server.close()


def test_another_sandboxs_listener_is_out_of_reach(provider: LocalSandboxProvider) -> None:
    alice = provider.create("alice-net", NET_ON)
    serve = ("cd /tmp && echo ALICE-PRIVATE-5120 > index.html && "
             "(nohup python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 &) ; "
             "for i in $(seq 50); do curl -s -m 1 http://127.0.0.1:8765/ && break; sleep 0.1; done")
    # Its own listener answers its next commands: one namespace for every command of a sandbox.
    assert "ALICE-PRIVATE-5120" in alice.bash().run(serve, timeout=30).stdout
    assert "ALICE-PRIVATE-5120" in alice.exec("curl -s -m 5 http://127.0.0.1:8765/").stdout
    mallory = provider.create("mallory-net", NET_ON)
    result = mallory.exec(f"curl -sS -m 5 http://127.0.0.1:8765/ 2>&1; {VIA_PROXY} http://127.0.0.1:8765/ 2>&1", timeout=30)
    assert "ALICE-PRIVATE" not in result.stdout
    assert "Couldn't connect" in result.stdout and "loopback address" in result.stdout, result


def test_network_off_has_no_proxy_and_turning_it_on_later_gives_one(provider: LocalSandboxProvider) -> None:
    off = provider.create("toggle", SandboxOptions())
    assert off.exec("env | grep -ci _proxy=; curl -sS -m 3 http://127.0.0.1:3128/ 2>&1").stdout.startswith("0\n")
    assert "Couldn't connect" in off.exec("curl -sS -m 3 --noproxy '' -x http://127.0.0.1:3128 http://x.example/ 2>&1").stdout
    on = provider.create("toggle", SandboxOptions(allow_network=True, network_deny=("x.example",)))
    assert on is off
    answer = on.exec(f"{VIA_PROXY} http://x.example/ 2>&1", timeout=30).stdout
    assert "x.example is denied by your settings (network.deny x.example)" in answer, answer
    provider.create("toggle", SandboxOptions())
    assert "Couldn't connect" in off.exec(f"{VIA_PROXY} -x http://127.0.0.1:3128 http://x.example/ 2>&1").stdout


def test_health_limits_name_the_network_mechanism(provider: LocalSandboxProvider) -> None:
    network = provider.limits()["network"]
    assert "network namespace per sandbox" in network and "127.0.0.1:3128" in network and "SOCKS5" in network


def test_the_sandbox_host_does_the_same_and_its_health_says_so(tmp_path: Path, metadata: Listener) -> None:
    import httpx

    from chalicelib.sandbox.remote import RemoteSandboxProvider
    from tests.support.sandbox_host import running_sandbox_host

    with running_sandbox_host(tmp_path / "host", SANDBOX_EGRESS_DENY="*.operator-denied.example") as (url, token):
        health = httpx.get(url + "/health").json()
        assert "network namespace per sandbox" in health["limits"]["network"]
        assert "SANDBOX_EGRESS_DENY *.operator-denied.example" in health["limits"]["network"]
        # The user's allow list names 127.0.0.1: rules never open what the address guard refuses.
        remote = RemoteSandboxProvider(Settings.from_env({"SANDBOX_URL": url, "SANDBOX_TOKEN": token}))
        sandbox = remote.create("remote-net", SandboxOptions(allow_network=True, network_allow=("pypi.org", "127.0.0.1")))
        result = sandbox.exec(f"curl -sS -m 5 http://127.0.0.1:{metadata.port}/ 2>&1; {VIA_PROXY} http://127.0.0.1:{metadata.port}/; "
                              f"{VIA_PROXY} http://a.operator-denied.example/; {VIA_PROXY} http://github.com/", timeout=60)
        assert "ASIA-FAKE" not in result.stdout and metadata.accepted == 0
        assert "Couldn't connect" in result.stdout and "127.0.0.1 is a loopback address" in result.stdout
        assert "a.operator-denied.example is denied by the operator" in result.stdout
        assert "github.com is not in your settings' allow list (network.allow)" in result.stdout, result
        bad = httpx.post(url + "/sessions/bad-rules", json={"allowNetwork": True, "networkAllow": ["a b"]},
                         headers={"Authorization": f"Bearer {token}"})
        assert bad.status_code == 400 and bad.json()["code"] and "not a host name" in bad.json()["error"]
        remote.destroy("remote-net")


def test_operator_rules_are_checked_at_startup() -> None:
    from chalicelib.errors import Misconfigured

    settings = Settings.from_env({"SANDBOX_EGRESS_ALLOW": "PyPI.org, *.github.com", "SANDBOX_EGRESS_MAX_CONNECTIONS": "8"})
    assert settings.sandbox.egress_allow == ("pypi.org", "*.github.com") and settings.sandbox.egress_max_connections == 8
    with pytest.raises(Misconfigured, match="SANDBOX_EGRESS_DENY|egress_deny"):
        Settings.from_env({"SANDBOX_EGRESS_DENY": "http://evil.example/"})
