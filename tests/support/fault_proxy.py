"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto server) on loopback.

Storage faults are injected at the wire, where a real R2 outage shows itself, so the code under
test keeps its real botocore client, retries and timeouts. Each request is matched against the
rules in order; the first rule that matches and still has firings left decides:

    FaultRule("PUT", r"/settings/", action="status", status=503)   # 503 SlowDown, nothing applied
    FaultRule("PUT", r"/settings/", action="drop_before")          # connection dropped, nothing applied
    FaultRule("PUT", r"/settings/", action="drop_after")           # applied upstream, response lost
    FaultRule("GET", r".*", action="hang", seconds=10)             # no answer for 10 s, then forwarded

Usage:

    with moto_server() as upstream, FaultProxy(upstream) as proxy:
        client = build_s3_client(storage_settings(proxy.url, bucket))
        proxy.add(FaultRule("PUT", "/users/", action="drop_after", times=1))
        ...
        assert proxy.fired("drop_after") == 1

Everything is bounded: a hang ends after its seconds or when the proxy stops, whichever comes
first, so a failing test never blocks the suite.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

Action = Literal["status", "drop_before", "drop_after", "hang"]

# Headers that describe one hop, not the message; the proxy sets its own.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}

_ERROR_CODES = {500: "InternalError", 503: "SlowDown"}
_ERROR_MESSAGES = {
    500: "We encountered an internal error. Please try again.",
    503: "Please reduce your request rate.",
}


@dataclass
class FaultRule:
    """One fault: which requests it hits, what it does, and how many times.

    `method`: an HTTP method or "*". `path`: a regex searched in the request target (path and
    query string, URL-encoded as sent). `times`: how many matching requests it fires on (None:
    all of them). `skip`: matching requests to let through before it starts firing. `body`: a
    regex the request body must also contain (a write of one kind of change to one object).
    """

    method: str
    path: str
    action: Action
    status: int = 503
    seconds: float = 30.0
    times: int | None = 1
    skip: int = 0
    fired: int = 0
    body: str | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)

    def matches(self, method: str, target: str, body: bytes = b"") -> bool:
        return ((self.method == "*" or self.method.upper() == method.upper()) and bool(self._pattern.search(target))
                and (self.body is None or re.search(self.body, body.decode("latin-1")) is not None))


@dataclass(frozen=True)
class SeenRequest:
    """What the proxy received, and what it did about it ("forward" when no rule fired)."""

    method: str
    target: str
    outcome: str


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 forwarding to `upstream` unless a rule fires."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._rules: list[FaultRule] = []
        self._seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging requests end at once (their connections are dropped)."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules ---------------------------------------------------------------------------

    def add(self, rule: FaultRule) -> FaultRule:
        """Append a rule (rules are tried in the order they were added)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule and end any hang in progress; later requests are forwarded."""
        with self._lock:
            self._rules.clear()

    def seen(self) -> list[SeenRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._seen)

    def fired(self, action: Action | None = None) -> int:
        """How many requests a rule (of `action`, or any) has acted on."""
        with self._lock:
            return sum(1 for s in self._seen if s.outcome != "forward" and (action is None or s.outcome == action))

    def _decide(self, method: str, target: str, body: bytes = b"") -> FaultRule | None:
        with self._lock:
            chosen = None
            for rule in self._rules:
                if not rule.matches(method, target, body):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.fired += 1
                chosen = rule
                break
            self._seen.append(SeenRequest(method, target, chosen.action if chosen else "forward"))
            return chosen

    def _still_hanging(self, rule: FaultRule) -> bool:
        with self._lock:
            return rule in self._rules and not self._stopping.is_set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

        def log_message(self, format: str, *args: object) -> None:
            return

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _drop(self) -> None:
            """Close the TCP connection without an answer (RST where the OS allows)."""
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _handle(self) -> None:
            try:
                self._proxy_one()
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up first (its own timeout after a hang): nothing to answer.
                self.close_connection = True

        def _proxy_one(self) -> None:
            body = self._body()
            rule = proxy._decide(self.command, self.path, body)
            if rule is not None and rule.action == "drop_before":
                self._drop()
                return
            if rule is not None and rule.action == "status":
                self._error(rule.status)
                return
            if rule is not None and rule.action == "hang":
                deadline = rule.seconds
                step = 0.05
                waited = 0.0
                while waited < deadline and proxy._still_hanging(rule):
                    proxy._stopping.wait(step)
                    waited += step
                if proxy._stopping.is_set():
                    self._drop()
                    return
            status, headers, payload = self._forward(body)
            if rule is not None and rule.action == "drop_after":
                self._drop()
                return
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if self.command == "HEAD":
                length = next((v for n, v in headers if n.lower() == "content-length"), "0")
                self.send_header("Content-Length", length)
            else:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "expect"}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                return response.status, response.getheaders(), payload
            finally:
                upstream.close()

        def _error(self, status: int) -> None:
            code = _ERROR_CODES.get(status, "InternalError")
            message = _ERROR_MESSAGES.get(status, "Injected fault.")
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


def running_fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A started proxy for a pytest fixture (`yield from running_fault_proxy(url)`)."""
    with FaultProxy(upstream) as proxy:
        yield proxy
