"""The egress proxy over real sockets on loopback: what it forwards, what it refuses and why.

The proxy's listeners are opened on the host's loopback here (in a sandbox they are inside its
network namespace: tests/integration/test_sandbox_egress.py). Names are resolved by a stand-in
resolver, so no test looks anything up or sends a packet beyond 127.0.0.1: the upstreams are on
loopback and reachable only through the guard's explicit test exemption.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from chalicelib.sandbox.egress_policy import AddressGuard, IPAddress
from chalicelib.sandbox.egress_proxy import EgressProxy
from chalicelib.sandbox.netns import SandboxNetwork

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


@dataclass
class Upstream:
    """A TCP server on loopback answering every connection with one HTTP response."""

    port: int
    accepted: list[bytes] = field(default_factory=list)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    found = Upstream(listener.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                found.accepted.append(data)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nUPSTREAM-OK\n")

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    yield found
    stop.set()
    worker.join(timeout=5)
    listener.close()


@dataclass
class Names:
    """A stand-in DNS: answers from a table, counts lookups."""

    table: dict[str, list[str]]
    lookups: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"no such name {host}")
        return [ipaddress.ip_address(a) for a in self.table[host]]


@dataclass
class Running:
    proxy: EgressProxy
    http_port: int
    socks_port: int
    dialled: list[tuple[str, int]]


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    return s


@pytest.fixture
def start() -> Iterator[object]:
    started: list[tuple[EgressProxy, SandboxNetwork]] = []

    def run(*, exempt: tuple[ipaddress.IPv4Network, ...] = LOOPBACK, names: Names | None = None,
            allow: tuple[str, ...] = (), deny: tuple[str, ...] = (), operator_allow: tuple[str, ...] = (),
            operator_deny: tuple[str, ...] = (), max_connections: int = 64, refuse_dial: bool = False) -> Running:
        dialled: list[tuple[str, int]] = []

        async def connector(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            dialled.append((host, port))
            if refuse_dial or not ipaddress.ip_address(host).is_loopback:
                raise ConnectionRefusedError("the test connector dials loopback only")
            return await asyncio.open_connection(host, port)

        proxy = EgressProxy(operator_allow=operator_allow, operator_deny=operator_deny, max_connections=max_connections,
                            guard=AddressGuard(exempt=exempt), resolver=names or Names({}), connector=connector)
        network = SandboxNetwork(-1, _listener(), _listener())
        proxy.attach("sess-1", network, proxy.rules_for(allow, deny))
        started.append((proxy, network))
        return Running(proxy, network.http_listener.getsockname()[1], network.socks_listener.getsockname()[1], dialled)

    yield run
    for proxy, network in started:
        proxy.close()
        network.close()


def _exchange(port: int, request: bytes, *, limit: int = 65536) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while len(data) < limit:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _connect(port: int, target: str) -> tuple[socket.socket, bytes]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1)
        if not chunk:
            break
        head += chunk
    return conn, head


def test_plain_http_is_forwarded_with_its_path_and_without_proxy_headers(start, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    run = start(names=Names({"pypi.org": ["127.0.0.1"]}), allow=("pypi.org",))
    answer = _exchange(run.http_port, f"GET http://pypi.org:{upstream.port}/simple/x?y=1 HTTP/1.1\r\nHost: pypi.org\r\n"
                       "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\r\n".encode())
    assert answer.endswith(b"UPSTREAM-OK\n"), answer
    sent = upstream.accepted[0].decode()
    assert sent.startswith("GET /simple/x?y=1 HTTP/1.1\r\n") and "Host: pypi.org" in sent
    assert "Proxy-" not in sent and "Connection: close" in sent
    assert run.dialled == [("127.0.0.1", upstream.port)]


def test_connect_tunnels_to_the_checked_address(start, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    run = start(names=Names({"files.githubusercontent.com": ["127.0.0.1"]}), allow=("*.githubusercontent.com",))
    conn, head = _connect(run.http_port, f"files.githubusercontent.com:{upstream.port}")
    with conn:
        assert head.startswith(b"HTTP/1.1 200"), head
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"UPSTREAM-OK" in conn.recv(4096)


def test_socks5_connects_by_name(start, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    run = start(names=Names({"example.org": ["127.0.0.1"]}))
    with socket.create_connection(("127.0.0.1", run.socks_port), timeout=10) as conn:
        conn.sendall(b"\x05\x01\x00")
        assert conn.recv(2) == b"\x05\x00"
        name = b"example.org"
        conn.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + upstream.port.to_bytes(2, "big"))
        assert conn.recv(10)[:2] == b"\x05\x00"
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"UPSTREAM-OK" in conn.recv(4096)


def test_socks5_refusal_is_not_allowed_by_ruleset(start, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    run = start(exempt=())
    with socket.create_connection(("127.0.0.1", run.socks_port), timeout=10) as conn:
        conn.sendall(b"\x05\x01\x00")
        assert conn.recv(2) == b"\x05\x00"
        conn.sendall(b"\x05\x01\x00\x01" + bytes([127, 0, 0, 1]) + upstream.port.to_bytes(2, "big"))
        assert conn.recv(10)[:2] == b"\x05\x02"
    assert upstream.accepted == [] and run.dialled == []


def test_the_loopback_upstream_needs_the_test_exemption(start, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    # The same request as the forwarding tests, without the exemption: refused, never dialled.
    run = start(exempt=(), names=Names({"pypi.org": ["127.0.0.1"]}))
    with caplog.at_level(logging.WARNING, logger="chalicelib.sandbox.egress_proxy"):
        answer = _exchange(run.http_port, f"GET http://pypi.org:{upstream.port}/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n".encode())
        conn, head = _connect(run.http_port, f"127.0.0.1:{upstream.port}")
        conn.close()
    assert answer.startswith(b"HTTP/1.1 403 Forbidden: 127.0.0.1 is a loopback address\r\n"), answer
    assert b"egress proxy: 127.0.0.1 is a loopback address" in answer
    assert head.startswith(b"HTTP/1.1 403") and b"loopback" in head
    assert upstream.accepted == [] and run.dialled == []
    assert "egress refused for session sess-1: pypi.org" in caplog.text


@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "a loopback address"),
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.170.2", "a cloud metadata address"),
    ("169.254.1.1", "a link-local address"),
    ("10.1.2.3", "a private address (RFC 1918)"),
    ("172.20.0.1", "a private address (RFC 1918)"),
    ("192.168.1.1", "a private address (RFC 1918)"),
    ("100.100.1.1", "a carrier-grade NAT address (100.64.0.0/10)"),
    ("fd12::1", "a unique local address (fc00::/7)"),
    ("::ffff:127.0.0.1", "a loopback address"),
    ("224.0.0.251", "a multicast address"),
    ("0.0.0.0", "the unspecified address"),
])
def test_names_resolving_to_forbidden_addresses_are_refused_before_connecting(start, address: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    names = Names({"innocent.example": [address]})
    run = start(exempt=(), names=names)
    answer = _exchange(run.http_port, b"CONNECT innocent.example:443 HTTP/1.1\r\nHost: innocent.example:443\r\n\r\n")
    assert answer.startswith(f"HTTP/1.1 403 Forbidden: {ipaddress.ip_address(address)} is {reason}".encode()), answer
    assert names.lookups == ["innocent.example"] and run.dialled == []


def test_only_the_checked_address_is_dialled(start) -> None:  # type: ignore[no-untyped-def]
    # A name answering a public address and loopback: loopback is dropped, the public one is
    # dialled as that literal (the test connector refuses it, so no packet leaves), and the name
    # is looked up once, so a second answer (DNS rebinding) is never asked for.
    names = Names({"rebind.example": ["127.0.0.1", "1.1.1.1"]})
    run = start(exempt=(), names=names, refuse_dial=True)
    answer = _exchange(run.http_port, b"CONNECT rebind.example:443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502"), answer
    assert run.dialled == [("1.1.1.1", 443)] and names.lookups == ["rebind.example"]


def test_this_hosts_own_addresses_are_refused(start) -> None:  # type: ignore[no-untyped-def]
    guard = AddressGuard()
    own = sorted(guard.own_addresses(), key=str)
    assert own, "the host has addresses"
    run = start(exempt=())
    for address in own:
        target = f"[{address}]:80" if address.version == 6 else f"{address}:80"
        answer = _exchange(run.http_port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 403"), (address, answer)
    assert run.dialled == []
    # A public address found on the host's interfaces is refused as the host's own.
    public = ipaddress.ip_address("8.8.4.4")
    guard._own, guard._own_read_at = frozenset({public}), 1e18
    assert guard.refusal(public) == "8.8.4.4 is this host's own address"


@pytest.mark.parametrize("rules,host,reason", [
    ({"operator_deny": ("*.evil.example",)}, "a.evil.example", "a.evil.example is denied by the operator (SANDBOX_EGRESS_DENY *.evil.example)"),
    ({"deny": ("pypi.org",), "allow": ("pypi.org",)}, "pypi.org", "pypi.org is denied by your settings (network.deny pypi.org)"),
    ({"allow": ("pypi.org",)}, "github.com", "github.com is not in your settings' allow list (network.allow)"),
    ({"allow": ("*.githubusercontent.com",)}, "githubusercontent.com",
     "githubusercontent.com is not in your settings' allow list (network.allow)"),
    ({"operator_allow": ("pypi.org",), "allow": ("github.com",)}, "github.com",
     "github.com is not in the operator's allow list (SANDBOX_EGRESS_ALLOW)"),
])
def test_name_rules_refuse_with_their_reason(start, upstream: Upstream, rules: dict[str, tuple[str, ...]], host: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    names = Names({host: ["127.0.0.1"]})
    run = start(names=names, **rules)
    answer = _exchange(run.http_port, f"GET http://{host}:{upstream.port}/ HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(f"HTTP/1.1 403 Forbidden: {reason}\r\n".encode()), answer
    assert names.lookups == [] and upstream.accepted == []


def test_the_connection_cap_refuses_the_next_connection(start, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    run = start(names=Names({"a.example": ["127.0.0.1"]}), max_connections=2)
    held = []
    for _ in range(2):
        conn, head = _connect(run.http_port, f"a.example:{upstream.port}")
        assert head.startswith(b"HTTP/1.1 200"), head
        held.append(conn)
    answer = _exchange(run.http_port, f"CONNECT a.example:{upstream.port} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 429") and b"SANDBOX_EGRESS_MAX_CONNECTIONS" in answer, answer
    for conn in held:
        conn.close()


def test_malformed_requests_get_400(start) -> None:  # type: ignore[no-untyped-def]
    run = start()
    assert _exchange(run.http_port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _exchange(run.http_port, b"GET https://x.example/ HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _exchange(run.http_port, b"CONNECT x.example HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _exchange(run.http_port, b"CONNECT x.example:99999 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert run.dialled == []


def test_detach_closes_open_tunnels(start, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    run = start(names=Names({"a.example": ["127.0.0.1"]}))
    conn, head = _connect(run.http_port, f"a.example:{upstream.port}")
    assert head.startswith(b"HTTP/1.1 200") and run.proxy.connections("sess-1") == 1
    run.proxy.detach("sess-1")
    with conn:
        conn.settimeout(5)
        assert conn.recv(100) == b""
    assert run.proxy.connections("sess-1") == 0
