"""A stand-in for Cloudflare's R2 temporary-credentials endpoint, on loopback.

    POST /client/v4/accounts/{account}/r2/temp-access-credentials   (Bearer <api token>)

It checks what the real endpoint would (the token, the account, the body's fields and types),
records every request, and answers with freshly made credentials in Cloudflare's envelope.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PERMISSIONS = {"object-read-write", "object-read-only", "admin-read-write", "admin-read-only"}


@dataclass
class Issued:
    access_key_id: str
    secret_access_key: str
    session_token: str
    request: dict[str, Any]


@dataclass
class FakeCloudflare:
    api_token: str
    account_id: str
    issued: list[Issued] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/client/v4"

    def __enter__(self) -> FakeCloudflare:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        if path != f"/client/v4/accounts/{self.account_id}/r2/temp-access-credentials":
            return self._refuse(404, 7003, f"No route for {path}")
        if headers.get("authorization") != f"Bearer {self.api_token}":
            return self._refuse(403, 10000, "Authentication error")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._refuse(400, 10001, "body is not JSON")
        problems = []
        if not isinstance(body.get("bucket"), str) or not body["bucket"]:
            problems.append("bucket")
        if not isinstance(body.get("parentAccessKeyId"), str) or not body["parentAccessKeyId"]:
            problems.append("parentAccessKeyId")
        if body.get("permission") not in PERMISSIONS:
            problems.append("permission")
        ttl = body.get("ttlSeconds")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= 604_800:
            problems.append("ttlSeconds")
        prefixes = body.get("prefixes", [])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            problems.append("prefixes")
        if problems:
            return self._refuse(400, 10001, f"invalid fields: {', '.join(problems)}")
        issued = Issued("tmp" + secrets.token_hex(8), secrets.token_hex(32), "jwt." + secrets.token_urlsafe(48), body)
        self.issued.append(issued)
        return 200, {"result": {"accessKeyId": issued.access_key_id, "secretAccessKey": issued.secret_access_key,
                                "sessionToken": issued.session_token}, "success": True, "errors": [], "messages": []}

    def _refuse(self, status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
        self.refused.append(message)
        return status, {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, answer = fake._answer(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
