"""A local stand-in for the Anthropic Messages API, for trying the product without a key.

`./scripts/dev --offline-model` serves it on loopback and points the app at it
(ANTHROPIC_BASE_URL). It is not Claude and never pretends to be: every reply says it comes from
the offline stand-in. It behaves like a tiny agent so that the whole path can be seen working
(streaming, a tool call run in the sandbox, its result, the final answer):

1. on a new user prompt it calls the bash tool: `ls -R /workspace/.claude/skills`;
2. given that listing, it reads the first skill file with `cat`;
3. given the file, it streams a short answer saying what it found.

It is stateless: each step is decided from the conversation the request carries, as the real
API does. Replies are streamed as server-sent events in the Messages API's wire format (an
`event:` line per record), or as one JSON message when the request does not ask for a stream.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel, ConfigDict

SKILLS_DIR = "/workspace/.claude/skills"
LABEL = "[offline stand-in, not Claude]"
MODEL_NAME = "offline-stand-in"


class ToolCall(BaseModel):
    """The stand-in's decision to run a command with the bash tool."""

    model_config = ConfigDict(frozen=True)

    preface: str
    command: str


class Answer(BaseModel):
    """The stand-in's final text for this prompt."""

    model_config = ConfigDict(frozen=True)

    text: str


def decide(body: dict[str, Any]) -> ToolCall | Answer:
    """The next step for the conversation in a Messages API request `body`."""
    messages = body.get("messages") or []
    prompt, results = _since_last_prompt(messages)
    has_bash = any(tool.get("name") == "bash" for tool in body.get("tools") or [])
    if not has_bash:
        return Answer(text=f"{LABEL} You said: \u201c{_short(prompt)}\u201d. I have no bash tool here, so I cannot look "
                           "at your skills. Set ANTHROPIC_API_KEY and restart ./scripts/dev without --offline-model "
                           "to talk to Claude.")
    if not results:
        return ToolCall(preface=f"{LABEL} Let me look at your skills first.\n", command=f"ls -R {SKILLS_DIR}")
    listing, listing_failed = results[0]
    files = [] if listing_failed else skill_files(listing)
    if len(results) == 1 and files:
        return ToolCall(preface=f"{LABEL} Reading {files[0]}.\n", command=f"cat {files[0]}")
    return Answer(text=_summary(prompt, files, results[1] if len(results) > 1 else None, listing_failed))


def skill_files(listing: str) -> list[str]:
    """Files (not folders) in the output of `ls -R SKILLS_DIR`, as absolute paths, SKILL.md and
    flat .md files first."""
    folder: str | None = None  # lines before the first "DIR:" header are errors, not entries
    entries: dict[str, list[str]] = {}
    folders: set[str] = set()
    for line in listing.splitlines():
        line = line.strip()
        if not line or line.startswith("[exit code"):
            continue
        if line.endswith(":") and line.startswith(SKILLS_DIR):
            folder = line[:-1].rstrip("/")
            folders.add(folder)
        elif folder is not None:
            entries.setdefault(folder, []).append(f"{folder}/{line}")
    paths = [p for found in entries.values() for p in found if p not in folders]
    return sorted(paths, key=lambda p: (not p.endswith(".md"), p.count("/"), p))


def _since_last_prompt(messages: list[dict[str, Any]]) -> tuple[str, list[tuple[str, bool]]]:
    """The last user prompt (text, not tool results) and the tool results after it, in order."""
    prompt = ""
    results: list[tuple[str, bool]] = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        tool_results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        if tool_results:
            results += [(_result_text(b), bool(b.get("is_error"))) for b in tool_results]
        else:
            prompt = " ".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")
            results = []
    return prompt.strip(), results


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content or [] if isinstance(part, dict))


def _summary(prompt: str, files: list[str], read: tuple[str, bool] | None, listing_failed: bool) -> str:
    head = f"{LABEL} This answer comes from the local offline stand-in, not from Claude. You asked: \u201c{_short(prompt)}\u201d.\n\n"
    tail = "\n\nTo talk to Claude, set ANTHROPIC_API_KEY and restart ./scripts/dev without --offline-model."
    if listing_failed or not files:
        return head + (f"I listed {SKILLS_DIR} and found no skill files. Upload one (POST /users/<user>/skills), "
                       "start a new session, and ask again." if not listing_failed else
                       f"Listing {SKILLS_DIR} failed, so I could not read any skill.") + tail
    names = ", ".join(f.removeprefix(SKILLS_DIR + "/") for f in files[:10]) + (" and more" if len(files) > 10 else "")
    body = f"I listed {SKILLS_DIR} and found {len(files)} file{'s' if len(files) != 1 else ''}: {names}."
    if read is not None:
        text, failed = read
        lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "---"]
        if failed or not lines:
            body += f" Reading {files[0]} gave nothing useful."
        else:
            body += (f" I read {files[0]}: it has {len(text.splitlines())} lines and begins with "
                     f"\u201c{_short(lines[0], 120)}\u201d.")
    return head + body + tail


def _short(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _pieces(text: str, size: int = 12) -> Iterator[str]:
    """Word-aligned chunks of about `size` characters, so the answer visibly streams."""
    chunk = ""
    for word in re.findall(r"\S+\s*", text):
        chunk += word
        if len(chunk) >= size:
            yield chunk
            chunk = ""
    if chunk:
        yield chunk


class OfflineModel:
    """The stand-in server on 127.0.0.1 (`port` 0: any free port), in a daemon thread."""

    def __init__(self, port: int = 0, *, delay: float = 0.02) -> None:
        self.delay = delay
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="offline-model", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OfflineModel:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OfflineModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        delay = self.delay

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def do_GET(self) -> None:  # noqa: N802
                self._error(404, "not_found_error", f"The offline stand-in serves only POST /v1/messages, not GET {self.path}.")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    return self._error(400, "invalid_request_error", "The request body is not JSON.")
                if self.path.split("?")[0].rstrip("/") != "/v1/messages":
                    return self._error(404, "not_found_error",
                                       f"The offline stand-in serves only POST /v1/messages, not {self.path}.")
                step = decide(body)
                blocks: list[dict[str, Any]] = []
                if isinstance(step, ToolCall):
                    blocks = [{"type": "text", "text": step.preface},
                              {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": "bash",
                               "input": {"command": step.command}}]
                else:
                    blocks = [{"type": "text", "text": step.text}]
                stop = "tool_use" if isinstance(step, ToolCall) else "end_turn"
                # Zero tokens: nothing is billed, so the result line's cost is $0, not a Claude price.
                usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
                try:
                    if body.get("stream"):
                        self._stream(body, blocks, stop, usage)
                    else:
                        self._json(200, self._message(body, blocks, stop, usage))
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client went away (an interrupt): nothing to finish

            def _message(self, body: dict[str, Any], content: list[dict[str, Any]], stop: str | None,
                         usage: dict[str, int]) -> dict[str, Any]:
                return {"id": "msg_" + uuid.uuid4().hex[:20], "type": "message", "role": "assistant",
                        "model": body.get("model") or MODEL_NAME, "content": content, "stop_reason": stop,
                        "stop_sequence": None, "usage": usage}

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_offline_" + uuid.uuid4().hex[:12])
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, kind: str, message: str) -> None:
                self._json(status, {"type": "error", "error": {"type": kind, "message": message}})

            def _event(self, name: str, data: dict[str, Any]) -> None:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def _stream(self, body: dict[str, Any], blocks: list[dict[str, Any]], stop: str, usage: dict[str, int]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.send_header("request-id", "req_offline_" + uuid.uuid4().hex[:12])
                self.end_headers()
                self.close_connection = True
                self._event("message_start", {"type": "message_start", "message": self._message(
                    body, [], None, usage)})
                self._event("ping", {"type": "ping"})
                for index, block in enumerate(blocks):
                    if block["type"] == "text":
                        self._event("content_block_start", {"type": "content_block_start", "index": index,
                                                            "content_block": {"type": "text", "text": ""}})
                        for piece in _pieces(block["text"]):
                            time.sleep(delay)
                            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                "delta": {"type": "text_delta", "text": piece}})
                    else:
                        self._event("content_block_start", {"type": "content_block_start", "index": index,
                                                            "content_block": {**block, "input": {}}})
                        for piece in _pieces(json.dumps(block["input"]), 16):
                            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                "delta": {"type": "input_json_delta", "partial_json": piece}})
                    self._event("content_block_stop", {"type": "content_block_stop", "index": index})
                self._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                              "usage": {"output_tokens": usage["output_tokens"]}})
                self._event("message_stop", {"type": "message_stop"})

        return Handler
