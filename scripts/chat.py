"""A terminal client: set up a session for a user, connect, send prompts, stream the answers.

    ./scripts/chat --user alice "What skills do I have?"     # one prompt, then exit
    ./scripts/chat --user alice                              # interactive; Ctrl-D to quit
    ./scripts/chat --url https://API --api-key KEY --user alice "..."
    ./scripts/chat --url https://API --token USER_TOKEN "..."   # as the end user the token names

Ctrl-C during an answer interrupts it (what was said is kept); a second Ctrl-C quits.
Exit status: 0 when every answer finished, 1 after an error (setup refused, an `error` event),
130 when interrupted by Ctrl-C.

Environment: AGENT_API_URL is the default for --url (http://127.0.0.1:8000, ./scripts/dev);
API_KEY the default for --api-key; AGENT_USER_TOKEN the default for --token (a user token from
your identity provider, or from POST /users/{userId}/tokens: it reaches only that user's data).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

DEFAULT_URL = "http://127.0.0.1:8000"
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
# After a turn's `error` event the server may still send the turn's `result`; wait this long for it.
RESULT_GRACE_SECONDS = 3.0


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{value} would stop the agent before it answers: give 1 or more (or leave it out for the "
            "user's settings, else the server's DEFAULT_MAX_TURNS)")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line of ./scripts/chat."""
    cli = argparse.ArgumentParser(prog="./scripts/chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("prompt", nargs="?", help="send this prompt and exit (interactive when omitted)")
    cli.add_argument("--user", help="the userId whose skills and history to use (with --token: the token's user)")
    cli.add_argument("--session", help="sessionId (default: a new one)")
    cli.add_argument("--conversation", help="continue this conversationId")
    cli.add_argument("--model", help="model for this session")
    cli.add_argument("--max-turns", type=positive_int, help="model replies per message, 1 or more")
    cli.add_argument("--url", default=os.environ.get("AGENT_API_URL") or DEFAULT_URL,
                     help=f"REST base URL (default: $AGENT_API_URL, else {DEFAULT_URL})")
    cli.add_argument("--api-key", default=os.environ.get("API_KEY"), help="API key (default: $API_KEY)")
    cli.add_argument("--token", default=os.environ.get("AGENT_USER_TOKEN"),
                     help="sign in as an end user with this user token instead of the API key (default: $AGENT_USER_TOKEN)")
    return cli


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if not args.user and not args.token:
        cli.error("--user is required (or --token, whose user it is)")
    try:
        return _chat(args)
    except KeyboardInterrupt:  # Ctrl-C outside an answer, or the second one during it
        print("\n[quit]", file=sys.stderr)
        return INTERRUPTED


def _chat(args: argparse.Namespace) -> int:
    credential = args.token or args.api_key
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    base = args.url.rstrip("/")
    session = args.session or f"chat-{uuid.uuid4().hex[:8]}"
    try:
        health = httpx.get(f"{base}/health", timeout=10)
        params = {"userId": args.user} if args.user else {}  # a user token's setup defaults to its user
        setup = httpx.post(f"{base}/setup/{session}", params=params, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url} ({exc}). Is ./scripts/dev running?", file=sys.stderr)
        return 1
    if health.status_code == 200 and health.json().get("offlineModel"):
        print("[offline stand-in model (./scripts/dev --offline-model): canned replies, not Claude]", file=sys.stderr)
    if setup.status_code != 200:
        print(f"error: setup failed ({setup.status_code}): {setup.text}", file=sys.stderr)
        return 1
    info = setup.json()
    print(f"[session {session} of {info['userId']}: {info['setupMethod']}, {len(info['skillsLoaded'])} skill files]",
          file=sys.stderr)
    status = 0
    try:
        with connect(f"{info['websocketUrl']}&token={info['token']}", max_size=2**24) as ws:
            start: dict[str, Any] = {"action": "start"}
            if args.model:
                start["model"] = args.model
            if args.max_turns is not None:
                start["maxTurns"] = args.max_turns
            if args.conversation:
                start["conversationId"] = args.conversation
            ws.send(json.dumps(start))
            outcome = show_until(ws, {"status"})
            if outcome != "ok":
                return 1
            prompts = [args.prompt] if args.prompt else _interactive()
            for prompt in prompts:
                ws.send(json.dumps({"action": "message", "prompt": prompt}))
                outcome = show_until(ws, {"result"}, interruptible=True)
                if outcome == "error":
                    status = 1
                elif outcome == "interrupted" and args.prompt:
                    status = INTERRUPTED
    except ConnectionClosed as exc:
        print(f"\nerror: the server closed the connection ({exc}).", file=sys.stderr)
        return 1
    return status


def _interactive() -> Iterator[str]:
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            return
        if line:
            yield line


class _CtrlC:
    """While an answer streams, the first Ctrl-C asks for an interrupt; the second quits."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True  # acted on by the receive loop, between frames


def show_until(ws: ClientConnection, stop: set[str], *, interruptible: bool = False) -> str:
    """Print frames until one of `stop` arrives: "ok", "interrupted" (the user pressed Ctrl-C and
    the turn ended), or "error" (an `error` event, whether or not the turn went on to a result)."""
    failed = False
    interrupt_sent = False
    grace_until: float | None = None
    with _CtrlC() as ctrl_c:
        for _ in range(10_000_000):
            if interruptible and ctrl_c.pressed and not interrupt_sent:
                ws.send(json.dumps({"action": "interrupt"}))
                interrupt_sent = True
                print("\n[interrupting; press Ctrl-C again to quit]", file=sys.stderr, flush=True)
            try:
                raw = ws.recv(timeout=0.25)  # short, so a Ctrl-C is acted on promptly
            except TimeoutError:
                if grace_until is not None and time.monotonic() > grace_until:
                    return "error"
                continue
            frame = json.loads(raw)
            event = frame.get("event")
            _print(frame)
            if event == "permission_request":
                answer_permission(ws, frame)
            if event == "error":
                failed = True
                if frame.get("seq", 0) == 0 and event not in stop:
                    return "error"  # the server refused our frame: nothing more will come of it
                grace_until = time.monotonic() + RESULT_GRACE_SECONDS
            if event in stop:
                if failed:
                    return "error"
                return "interrupted" if interrupt_sent or frame.get("interrupted") else "ok"
    return "error"


def _print(frame: dict[str, Any]) -> None:
    event = frame.get("event")
    if event == "stream":
        print(frame["content"], end="", flush=True)
    elif event == "tool_use":
        print(f"\n  ⚙ {frame['name']} {json.dumps(frame['input'])[:200]}", flush=True)
    elif event == "permission_resolved":
        if frame.get("reason") in ("timeout", "interrupted", "turn_cut_off"):
            print(f"  [{frame['name']}: not run ({frame['reason']})]", file=sys.stderr, flush=True)
    elif event == "tool_result":
        content = frame["content"] if isinstance(frame["content"], str) else json.dumps(frame["content"])
        first = (content or "").strip().splitlines()[:3]
        mark = "✗" if frame.get("is_error") else "→"
        print("  " + mark + " " + "\n    ".join(first)[:300], flush=True)
    elif event == "result":
        cost = f"${frame['costUsd']:.4f}" if frame.get("costUsd") is not None else "cost unknown"
        usage = frame["usage"]
        turns = frame["turns"]
        print(f"\n[{turns} model {'reply' if turns == 1 else 'replies'}, {frame['durationMs']} ms, {usage['inputTokens']} in / "
              f"{usage['outputTokens']} out tokens, {cost}, {frame['stopReason']}"
              f"{', interrupted' if frame.get('interrupted') else ''}]", file=sys.stderr)
    elif event == "error":
        print(f"\n[error {frame['code']}] {frame['message']}", file=sys.stderr)
    elif event == "status" and frame.get("status") not in ("queued", "running", "ready"):
        print(f"\n[{frame.get('status')}] {frame.get('message', '')}", file=sys.stderr)


PERMISSION_ANSWERS = {"y": ("allow", False), "yes": ("allow", False), "n": ("deny", False), "no": ("deny", False),
                      "a": ("allow", True), "always": ("allow", True)}


def answer_permission(ws: ClientConnection, frame: dict[str, Any]) -> None:
    """Ask on the terminal whether the agent may make this tool call (the user's settings say
    `ask` for it); `always` allows this tool for the rest of the session. No answer (end of
    input) denies."""
    shown = json.dumps(frame["input"], ensure_ascii=False)
    print(f"\n  ? {frame['name']} {shown[:500]}", flush=True)
    answer = None
    for _ in range(5):
        try:
            typed = input("  Allow this? [y]es / [n]o / [a]lways for this session: ").strip().lower()
        except EOFError:
            break
        answer = PERMISSION_ANSWERS.get(typed)
        if answer is not None:
            break
        print("  Answer y, n or always.", flush=True)
    decision, remember = answer or ("deny", False)
    ws.send(json.dumps({"action": "permission", "toolUseId": frame["toolUseId"], "decision": decision, "remember": remember}))


if __name__ == "__main__":
    sys.exit(main())
