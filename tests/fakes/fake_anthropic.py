"""A fake Anthropic Messages API on loopback, scripted per test.

It speaks the real wire format (server-sent events with an `event:` line per record:
message_start, content_block_start / _delta / _stop, message_delta, message_stop, pings), so
the real `anthropic` SDK is pointed at it with `base_url`. It can also answer HTTP errors with
`retry-after-ms`, fail mid-stream, drop the connection mid-text or mid-tool-call (no
message_stop), stream slowly, or stream until the client goes away.

    with FakeAnthropic() as fake:
        fake.script(Reply([ToolUse("bash", {"command": "cat /workspace/x"})]), Reply([Text("Done.")]))
        client = anthropic.Anthropic(api_key="test", base_url=fake.url)
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union


@dataclass
class Text:
    """A text block, streamed in `chunks` deltas."""

    text: str
    chunks: int = 4


@dataclass
class ToolUse:
    """A tool_use block whose input JSON is streamed in `chunks` partial_json pieces."""

    name: str
    input: dict[str, Any]
    id: str = field(default_factory=lambda: "toolu_" + uuid.uuid4().hex[:20])
    chunks: int = 3


@dataclass
class Thinking:
    """A thinking block: `thinking` streamed in `chunks` thinking_delta pieces, then its signature."""

    thinking: str
    signature: str = field(default_factory=lambda: "sig_" + uuid.uuid4().hex * 2)
    chunks: int = 3


@dataclass
class RedactedThinking:
    """A redacted_thinking block (opaque `data`, sent whole in content_block_start)."""

    data: str = field(default_factory=lambda: "redacted_" + uuid.uuid4().hex)


@dataclass
class ServerToolUse:
    """A tool call the API runs itself: `server_tool_use` (web_search, web_fetch) or, with
    `server_name`, an MCP connector `mcp_tool_use`; its input streamed as partial JSON."""

    name: str
    input: dict[str, Any]
    server_name: str | None = None
    id: str = field(default_factory=lambda: "srvtoolu_" + uuid.uuid4().hex[:20])
    chunks: int = 2


@dataclass
class ServerToolResult:
    """A server tool's result block (`web_search_tool_result`, `web_fetch_tool_result`,
    `mcp_tool_result`), sent whole in content_block_start as the API does."""

    type: str
    tool_use_id: str
    content: Any
    is_error: bool | None = None


@dataclass
class Reply:
    """One streamed assistant message."""

    blocks: list[Text | ToolUse | Thinking | RedactedThinking | ServerToolUse | ServerToolResult]
    stop_reason: str | None = None  # default: tool_use if any ToolUse, else end_turn
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    delay: float = 0.0  # seconds between events
    error_after: int | None = None  # send `event: error` (overloaded) after this many deltas
    # Drop the connection after this many deltas (text or tool-input JSON), with no
    # message_stop: as a proxy or network failure cuts a reply. `drop_reset` closes with a TCP
    # reset instead of a clean end of stream.
    drop_after: int | None = None
    drop_reset: bool = False


@dataclass
class HttpError:
    """An HTTP error answer, like the API's."""

    status: int
    type: str = "overloaded_error"
    message: str = "Overloaded"
    retry_after_ms: int | None = None


@dataclass
class Endless:
    """Text deltas until the client disconnects (or `max_deltas`)."""

    delta: str = "word "
    delay: float = 0.01
    max_deltas: int = 100_000


Response = Union[Reply, HttpError, Endless]
Responder = Callable[[dict[str, Any]], Response]


class FakeAnthropic:
    """The server. `script(...)` queues responses; `requests` records every request."""

    def __init__(self) -> None:
        self.queue: deque[Response | Responder] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.disconnects = 0
        self.drops = 0  # replies cut off on purpose (Reply.drop_after)
        self.emitted: list[tuple[float, str]] = []  # (monotonic time, text delta) for benchmarks
        self.record_emits = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *responses: Response | Responder) -> None:
        with self.lock:
            self.queue.extend(responses)

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, body: dict[str, Any]) -> Response:
        with self.lock:
            if not self.queue:
                return HttpError(500, "api_error", "FakeAnthropic: no scripted response left for this request")
            item = self.queue.popleft()
        return item(body) if callable(item) else item

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.split("?")[0].rstrip("/") != "/v1/messages":  # the beta API adds ?beta=true
                    return self._error(HttpError(404, "not_found_error", f"no route {self.path}"))
                response = fake._next(body)
                if isinstance(response, HttpError):
                    return self._error(response)
                try:
                    if isinstance(response, Endless):
                        self._endless(body, response)
                    else:
                        self._stream(body, response)
                except _Dropped as drop:
                    with fake.lock:
                        fake.drops += 1
                    self._drop(drop.reset)
                except (BrokenPipeError, ConnectionResetError):
                    with fake.lock:
                        fake.disconnects += 1

            def _error(self, error: HttpError) -> None:
                payload = json.dumps({"type": "error", "error": {"type": error.type, "message": error.message}}).encode()
                self.send_response(error.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("request-id", "req_" + uuid.uuid4().hex[:12])
                if error.retry_after_ms is not None:
                    self.send_header("retry-after-ms", str(error.retry_after_ms))
                self.send_header("x-should-retry", "true" if error.status in (408, 409, 429) or error.status >= 500 else "false")
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self, reset: bool) -> None:
                self.close_connection = True
                if reset:
                    # SO_LINGER 0: close() sends RST, so the client sees a reset, not an EOF.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.wfile.flush()
                self.connection.close()

            def _start(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.send_header("request-id", "req_" + uuid.uuid4().hex[:12])
                self.end_headers()
                self.close_connection = True

            def _event(self, name: str, data: dict[str, Any], delay: float = 0.0) -> None:
                if delay:
                    time.sleep(delay)
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def _message_start(self, body: dict[str, Any], reply: Reply | None) -> None:
                usage = {
                    "input_tokens": reply.input_tokens if reply else 100, "output_tokens": 1,
                    "cache_creation_input_tokens": reply.cache_creation_input_tokens if reply else 0,
                    "cache_read_input_tokens": reply.cache_read_input_tokens if reply else 0,
                }
                self._event("message_start", {"type": "message_start", "message": {
                    "id": "msg_" + uuid.uuid4().hex[:20], "type": "message", "role": "assistant", "model": body.get("model"),
                    "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}})

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                self._start()
                self._message_start(body, reply)
                self._event("ping", {"type": "ping"})
                deltas = 0
                for index, block in enumerate(reply.blocks):
                    if isinstance(block, Text):
                        self._event("content_block_start", {"type": "content_block_start", "index": index,
                                                            "content_block": {"type": "text", "text": ""}}, reply.delay)
                        for piece in _split(block.text, block.chunks):
                            if reply.drop_after is not None and deltas >= reply.drop_after:
                                raise _Dropped(reply.drop_reset)
                            if reply.error_after is not None and deltas >= reply.error_after:
                                return self._event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                "delta": {"type": "text_delta", "text": piece}}, reply.delay)
                            if fake.record_emits:
                                fake.emitted.append((time.monotonic(), piece))
                            deltas += 1
                    elif isinstance(block, Thinking):
                        self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                            "type": "thinking", "thinking": "", "signature": ""}}, reply.delay)
                        for piece in _split(block.thinking, block.chunks):
                            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                "delta": {"type": "thinking_delta", "thinking": piece}}, reply.delay)
                        self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                            "delta": {"type": "signature_delta", "signature": block.signature}})
                    elif isinstance(block, ServerToolUse):
                        start = {"type": "server_tool_use", "id": block.id, "name": block.name, "input": {}}
                        if block.server_name is not None:
                            start = {"type": "mcp_tool_use", "id": block.id, "name": block.name, "server_name": block.server_name, "input": {}}
                        self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}, reply.delay)
                        for piece in _split(json.dumps(block.input), block.chunks):
                            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                "delta": {"type": "input_json_delta", "partial_json": piece}}, reply.delay)
                    elif isinstance(block, ServerToolResult):
                        result: dict[str, Any] = {"type": block.type, "tool_use_id": block.tool_use_id, "content": block.content}
                        if block.is_error is not None:
                            result["is_error"] = block.is_error
                        self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": result}, reply.delay)
                    elif isinstance(block, RedactedThinking):
                        self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                            "type": "redacted_thinking", "data": block.data}}, reply.delay)
                    else:
                        self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                            "type": "tool_use", "id": block.id, "name": block.name, "input": {}}}, reply.delay)
                        for piece in _split(json.dumps(block.input), block.chunks):
                            if reply.drop_after is not None and deltas >= reply.drop_after:
                                raise _Dropped(reply.drop_reset)
                            deltas += 1
                            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                "delta": {"type": "input_json_delta", "partial_json": piece}}, reply.delay)
                    self._event("content_block_stop", {"type": "content_block_stop", "index": index})
                stop = reply.stop_reason or ("tool_use" if any(isinstance(b, ToolUse) for b in reply.blocks) else "end_turn")
                self._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                              "usage": {"output_tokens": reply.output_tokens}})
                self._event("message_stop", {"type": "message_stop"})

            def _endless(self, body: dict[str, Any], endless: Endless) -> None:
                self._start()
                self._message_start(body, None)
                self._event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
                for _ in range(endless.max_deltas):
                    self._event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": endless.delta}}, endless.delay)
                self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
                self._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                              "usage": {"output_tokens": endless.max_deltas}})
                self._event("message_stop", {"type": "message_stop"})

        return Handler


class _Dropped(Exception):
    """Raised inside a handler to cut the connection where a scripted reply says."""

    def __init__(self, reset: bool) -> None:
        super().__init__("dropped")
        self.reset = reset


def _split(text: str, parts: int) -> Iterator[str]:
    """`text` in about `parts` non-empty pieces."""
    if not text:
        return iter(())
    size = max(1, -(-len(text) // max(1, parts)))
    return iter([text[i : i + size] for i in range(0, len(text), size)])
