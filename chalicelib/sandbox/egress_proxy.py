"""The egress proxy: the only way a network-on sandbox reaches anything.

One asyncio loop on a thread of the server serves every sandbox of the provider. Each sandbox
has its own two listeners inside its network namespace (`netns.py`):
- 127.0.0.1:3128 speaks HTTP proxy: `CONNECT host:port` (what HTTPS clients send) and plain
  `GET http://host/...` requests, forwarded with `Connection: close`;
- 127.0.0.1:1080 speaks SOCKS5 (no authentication, CONNECT only; `socks5h://` so the proxy
  resolves names).

For every request the proxy checks the name (`EgressRules`), resolves it itself, checks each
address (`AddressGuard`) and connects to an address it checked, so DNS rebinding has no second
lookup to answer differently. A refusal is an HTTP 403 whose status line and body give the
reason (SOCKS5 has no room for text: it gets "connection not allowed by ruleset"), and a
warning in the server's log naming the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from chalicelib.sandbox.egress_policy import AddressGuard, EgressRules, IPAddress
from chalicelib.sandbox.netns import HTTP_PROXY_PORT, SOCKS_PROXY_PORT, SandboxNetwork

log = logging.getLogger(__name__)

#: A resolver: host name and port to the addresses to try, in order.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
#: A connector: an address literal (already checked) and port to an open stream.
Connector = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

_HEAD_LIMIT = 64 * 1024
_HEAD_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0
_CHUNK = 64 * 1024
_HOP_BY_HOP = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}

#: The variables a network-on sandbox gets; tools that ignore them have no route at all.
PROXY_ENVIRONMENT = {
    **{name: f"http://127.0.0.1:{HTTP_PROXY_PORT}" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
    **{name: f"socks5h://127.0.0.1:{SOCKS_PROXY_PORT}" for name in ("ALL_PROXY", "all_proxy")},
    # The sandbox's own loopback is its own (servers the agent starts): not through the proxy.
    **{name: "localhost,127.0.0.1,::1" for name in ("NO_PROXY", "no_proxy")},
}


class Refused(Exception):
    """The proxy will not make this connection; `reason` says why, for the agent."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class _Tenant:
    session_id: str
    rules: EgressRules
    servers: list[asyncio.base_events.Server] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    open_connections: int = 0


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's resolver (getaddrinfo), addresses in the order it gives them."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in seen:
            seen.append(address)
    return seen


class EgressProxy:
    """Serves every network-on sandbox's listeners; `attach` one, `detach` it at teardown."""

    def __init__(self, *, operator_allow: tuple[str, ...] = (), operator_deny: tuple[str, ...] = (),
                 max_connections: int = 64, guard: AddressGuard | None = None,
                 resolver: Resolver = system_resolver, connector: Connector = asyncio.open_connection) -> None:
        """`resolver` and `connector` are the network edges; tests give stand-ins that never leave loopback."""
        self.operator_allow = operator_allow
        self.operator_deny = operator_deny
        self.max_connections = max_connections
        self.guard = guard or AddressGuard()
        self.resolver = resolver
        self.connector = connector
        self._tenants: dict[str, _Tenant] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- lifecycle (called from the server's threads) -----------------------------------------

    def rules_for(self, allow: tuple[str, ...], deny: tuple[str, ...]) -> EgressRules:
        """The operator's rules with a user's added."""
        return EgressRules(user_allow=allow, user_deny=deny, operator_allow=self.operator_allow,
                           operator_deny=self.operator_deny)

    def attach(self, session_id: str, network: SandboxNetwork, rules: EgressRules) -> None:
        """Start serving a sandbox's listeners under `rules` (replacing what it had)."""
        self.detach(session_id)
        tenant = _Tenant(session_id, rules)
        self._call(self._serve(tenant, network))

    def set_rules(self, session_id: str, rules: EgressRules) -> None:
        """New rules for a sandbox's next connections (a user changed their settings)."""
        tenant = self._tenants.get(session_id)
        if tenant is not None:
            tenant.rules = rules

    def detach(self, session_id: str) -> None:
        """Stop serving a sandbox and close every connection it has open."""
        if self._loop is not None and session_id in self._tenants:
            self._call(self._stop(session_id))

    def connections(self, session_id: str) -> int:
        """How many proxied connections the sandbox has open now."""
        tenant = self._tenants.get(session_id)
        return tenant.open_connections if tenant is not None else 0

    def _call(self, coroutine: Awaitable[None]) -> None:
        loop = self._ensure_loop()
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop serving every sandbox and end the proxy's thread (a later attach starts it again)."""
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        for session_id in list(self._tenants):
            asyncio.run_coroutine_threadsafe(self._stop(session_id), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="egress-proxy", daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    async def _serve(self, tenant: _Tenant, network: SandboxNetwork) -> None:
        self._tenants[tenant.session_id] = tenant
        for listener, handler in ((network.http_listener, self._http), (network.socks_listener, self._socks)):
            server = await asyncio.start_server(self._track(tenant, handler), sock=listener, limit=_HEAD_LIMIT)
            tenant.servers.append(server)

    async def _stop(self, session_id: str) -> None:
        tenant = self._tenants.pop(session_id, None)
        if tenant is None:
            return
        for server in tenant.servers:
            server.close()
        for task in list(tenant.tasks):
            task.cancel()
        if tenant.tasks:
            await asyncio.wait(tenant.tasks, timeout=5)

    def _track(self, tenant: _Tenant, handler: Callable[[_Tenant, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
               ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tenant.tasks.add(task)
            tenant.open_connections += 1
            try:
                await handler(tenant, reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
                pass
            finally:
                tenant.open_connections -= 1
                tenant.tasks.discard(task)
                writer.close()
        return connection

    # -- the decision ---------------------------------------------------------------------

    async def open_upstream(self, tenant: _Tenant, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Check, resolve, check again and connect; Refused says why not."""
        if tenant.open_connections > self.max_connections:
            raise self._refuse(tenant, host, port, f"this sandbox already has {self.max_connections} connections open "
                               "(SANDBOX_EGRESS_MAX_CONNECTIONS); close some first", 429)
        if not 0 < port < 65536:
            raise self._refuse(tenant, host, port, f"port {port} is not a TCP port", 400)
        reason = tenant.rules.refusal_for_name(host)
        if reason is not None:
            raise self._refuse(tenant, host, port, reason)
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            try:
                addresses = await asyncio.wait_for(self.resolver(host, port), _CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                raise self._refuse(tenant, host, port, f"{host} could not be resolved ({exc})", 502) from None
        refusals = [(address, self.guard.refusal(address)) for address in addresses]
        allowed = [address for address, why in refusals if why is None]
        if not allowed:
            why = next((w for _, w in refusals if w), f"{host} has no address")
            raise self._refuse(tenant, host, port, why)
        failure: Exception | None = None
        for address in allowed:
            try:
                # The literal address just checked: nothing is resolved again.
                return await asyncio.wait_for(self.connector(str(address), port), _CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                failure = exc
        raise Refused(f"{host}:{port} did not accept the connection ({failure or 'timed out'})", 502)

    def _refuse(self, tenant: _Tenant, host: str, port: int, reason: str, status: int = 403) -> Refused:
        log.warning("egress refused for session %s: %s:%s: %s", tenant.session_id, host, port, reason)
        return Refused(reason, status)

    # -- HTTP proxy -----------------------------------------------------------------------

    async def _http(self, tenant: _Tenant, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _answer(writer, 400, "the request line is not METHOD TARGET HTTP/x")
            return
        method, target, version = parts
        try:
            if method.upper() == "CONNECT":
                host, port = _split_host_port(target, None)
                upstream = await self.open_upstream(tenant, host, port)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                host, port, path = _absolute_http(target)
                upstream = await self.open_upstream(tenant, host, port)
                upstream[1].write(_forwarded_head(method, path, version, lines[1:]))
        except Refused as refused:
            await _answer(writer, refused.status, refused.reason)
            return
        await _relay(reader, writer, *upstream)

    # -- SOCKS5 ---------------------------------------------------------------------------

    async def _socks(self, tenant: _Tenant, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await asyncio.wait_for(reader.readexactly(2), _HEAD_TIMEOUT)
        methods = await reader.readexactly(count)
        if version != 5 or 0 not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(b"\x05\x00")
        _, command, _, kind = await asyncio.wait_for(reader.readexactly(4), _HEAD_TIMEOUT)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif kind == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode("idna")
        else:
            writer.write(_socks_reply(8))
            return
        port = int.from_bytes(await reader.readexactly(2), "big")
        if command != 1:
            writer.write(_socks_reply(7))  # command not supported: CONNECT only
            return
        try:
            upstream = await self.open_upstream(tenant, host, port)
        except Refused as refused:
            writer.write(_socks_reply(2 if refused.status == 403 else 5 if refused.status == 502 else 1))
            return
        writer.write(_socks_reply(0))
        await _relay(reader, writer, *upstream)


def _split_host_port(authority: str, default: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
    if not host:
        raise Refused("the target names no host", 400)
    if not port_text:
        if default is None:
            raise Refused("CONNECT needs host:port", 400)
        return host.lower(), default
    if not port_text.isdigit():
        raise Refused(f"{port_text!r} is not a port", 400)
    return host.lower(), int(port_text)


def _absolute_http(target: str) -> tuple[str, int, str]:
    if not target.lower().startswith("http://"):
        raise Refused("a proxied request needs an absolute http:// URL; for https, use CONNECT", 400)
    rest = target[len("http://"):]
    authority, slash, path = rest.partition("/")
    host, port = _split_host_port(authority.rpartition("@")[2], 80)
    return host, port, slash + path if slash else "/"


def _forwarded_head(method: str, path: str, version: str, headers: list[str]) -> bytes:
    kept = [line for line in headers if line and line.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
    # One request per connection: the relay then simply runs until either side closes.
    return "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    phrase = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests", 502: "Bad Gateway"}.get(status, "Error")
    # The reason goes in the status line too: clients that report a failed CONNECT show only that.
    flat = " ".join(reason.split())
    body = f"egress proxy: {flat}\n".encode()
    writer.write(f"HTTP/1.1 {status} {phrase}: {flat}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"X-Egress-Refused: {flat}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(OSError):
        await writer.drain()


def _socks_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(_CHUNK):
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except OSError:
            sink.close()

    try:
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
    finally:
        up_writer.close()
