"""A loopback HTTP reverse proxy that adds a fixed delay to every request, as R2 would.

Used by the benchmarks: moto server answers in well under a millisecond, which hides every
sequential round trip; R2 from a Lambda answers in tens of milliseconds.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import NamedTuple
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class Traffic(NamedTuple):
    """One proxied request: its method and path, the body bytes sent up and down, the status."""

    method: str
    path: str
    sent: int
    received: int
    status: int


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops the SYNs of a parallel burst, and each dropped
    # connection waits a 1 s retransmit: the benchmark would time the proxy, not the product.
    request_queue_size = 256
    daemon_threads = True


class LatencyProxy:
    """`with LatencyProxy("http://127.0.0.1:5000", delay=0.02) as url:` → proxied base URL."""

    def __init__(self, upstream: str, delay: float = 0.02) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.delay = delay
        self.requests = 0
        # (arrived, answered, client, request line): monotonic seconds, comparable across
        # processes on Linux; client is the User-Agent's product ("Botocore", "s3fs").
        self.log: list[tuple[float, float, str, str]] = []
        # What each request moved, for byte and operation counts (see `Traffic`).
        self.traffic: list[Traffic] = []
        self._count_lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def take_log(self) -> list[tuple[float, float, str, str]]:
        """The requests served since the last call, and forget them."""
        with self._count_lock:
            taken, self.log = self.log, []
        return taken

    def take_traffic(self) -> list[Traffic]:
        """What the requests served since the last call moved, and forget them."""
        with self._count_lock:
            taken, self.traffic = self.traffic, []
        return taken

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle on, the body waits for the
            # client's delayed ACK (40 ms on Linux) and every request would pay it.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
                return

            def _forward(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                time.sleep(proxy.delay)
                with proxy._count_lock:
                    proxy.requests += 1
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()
                with proxy._count_lock:
                    proxy.log.append((arrived, time.monotonic(), self.headers.get("User-Agent", "").split("/")[0],
                                      f"{self.command} {self.path}"))
                    proxy.traffic.append(Traffic(self.command, self.path, len(body or b""),
                                                 0 if self.command == "HEAD" else len(data), response.status))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward  # noqa: N815

        return Handler
