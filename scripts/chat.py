"""A terminal client: set up a session for a user, connect, send prompts, stream the answers.

    ./scripts/chat --user alice "What skills do I have?"     # one prompt, then exit
    ./scripts/chat --user alice                              # interactive; Ctrl-D to quit
    ./scripts/chat --url https://API --api-key KEY --user alice "..."
    ./scripts/chat --url https://API --token USER_TOKEN "..."   # as the end user the token names

Ctrl-C during an answer interrupts it (what was said is kept); a second Ctrl-C quits.
Interactive input: a multi-line paste is one prompt (bracketed paste, in a terminal); a line
ending in a backslash continues on the next; a line of three double quotes starts a block
that the next such line ends.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake
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
    if not info.get("websocketUrl"):
        # `chalice local` serves REST only: its setup says so instead of handing out a URL.
        print(f"error: {args.url} has no agent WebSocket. {info.get('message', '')}", file=sys.stderr)
        return 1
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
                # A fresh id per message: a resend with the same id is queued at most once. Naming
                # the session lets the server read its state while it looks the connection up.
                ws.send(json.dumps({"action": "message", "prompt": prompt, "messageId": f"m-{uuid.uuid4().hex}",
                                    "sessionId": session}))
                outcome = show_until(ws, {"result"}, interruptible=True)
                if outcome == "error":
                    status = 1
                elif outcome == "interrupted" and args.prompt:
                    status = INTERRUPTED
    except ConnectionClosed as exc:
        print(f"\nerror: the server closed the connection ({exc}).", file=sys.stderr)
        return 1
    except (InvalidHandshake, OSError) as exc:
        print(f"error: cannot open the agent WebSocket at {info['websocketUrl']} ({exc}). "
              "It is served by ./scripts/dev, or by the deployment's WebSocket API.", file=sys.stderr)
        return 1
    return status


PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
BLOCK = '"""'
MAX_PROMPT_LINES = 100_000


def read_prompt(ask: Callable[[str], str]) -> str:
    """One prompt, from as many lines as it takes: `ask(prompt)` reads a line (EOFError at the
    end of input). A bracketed paste runs to its end marker, newlines and all; a line ending in
    a backslash continues on the next; a line opening with three double quotes starts a block
    that a line ending in three closes. EOFError only when nothing was read."""
    line = ask("\nyou> ")
    lines: list[str] = []
    try:
        if line.lstrip().startswith(BLOCK):
            opening = line.lstrip()[len(BLOCK):]
            if opening.rstrip().endswith(BLOCK):  # """all on one line"""
                return _clean(opening.rstrip()[:-len(BLOCK)])
            if opening.strip():
                lines.append(opening)
            for _ in range(MAX_PROMPT_LINES):
                try:
                    line = ask("... ")
                except EOFError:
                    break  # an unclosed block ends with the input
                if line.rstrip().endswith(BLOCK):
                    closing = line.rstrip()[:-len(BLOCK)]
                    if closing.strip():
                        lines.append(closing)
                    break
                lines.append(line)
            return _clean("\n".join(lines))
        for _ in range(MAX_PROMPT_LINES):
            if PASTE_START in line and PASTE_END not in line.split(PASTE_START, 1)[1]:
                line += "\n" + ask("")  # inside a paste: its newlines belong to the prompt
            elif line.endswith("\\") and PASTE_START not in line:
                lines.append(line[:-1])
                line = ""
                line = ask("... ")
            else:
                break
    except EOFError:
        pass  # the end of input ends the prompt too
    if line or not lines:
        lines.append(line)
    return _clean("\n".join(lines))


def _clean(text: str) -> str:
    return text.replace(PASTE_START, "").replace(PASTE_END, "")


@contextmanager
def _no_control_echo() -> Iterator[None]:
    """In a terminal, control characters are not echoed as ^X: no ^C inside the streamed text,
    and the bracketed-paste markers print nothing visible."""
    if not sys.stdin.isatty():
        yield
        return
    import termios

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHOCTL
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


@contextmanager
def _terminal() -> Iterator[None]:
    """While a prompt is read in a terminal: bracketed paste on, so a paste arrives between
    markers and its lines stay one prompt."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        yield
        return
    sys.stdout.write("\x1b[?2004h")
    sys.stdout.flush()
    try:
        with _no_control_echo():
            yield
    finally:
        sys.stdout.write("\x1b[?2004l")
        sys.stdout.flush()


def _interactive() -> Iterator[str]:
    while True:
        try:
            with _terminal():
                prompt = read_prompt(input).strip()
        except EOFError:
            return
        if prompt:
            yield prompt


class FrameParts:
    """Joins a frame sent in parts (`part`, `parts`, `data`: slices of the whole frame's JSON)."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int], dict[int, str]] = {}

    def join(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """The frame itself, the whole frame once its last part came, or None meanwhile."""
        if not frame.get("parts"):
            return frame
        key = (str(frame.get("event")), int(frame.get("seq") or 0))
        got = self.pending.setdefault(key, {})
        got[int(frame["part"])] = str(frame["data"])
        if len(got) < int(frame["parts"]):
            return None
        del self.pending[key]
        whole: dict[str, Any] = json.loads("".join(got[n] for n in sorted(got)))
        return whole


class _CtrlC:
    """While an answer streams, the first Ctrl-C asks for an interrupt; the second quits."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        self._echo = _no_control_echo()
        self._echo.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._echo.__exit__(None, None, None)
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
    parts = FrameParts()
    grace_until: float | None = None
    with _CtrlC() as ctrl_c:
        for _ in range(10_000_000):
            if interruptible and ctrl_c.pressed and not interrupt_sent:
                # No notice here: it would land in the middle of the text still streaming. The
                # result line says "interrupted", once, after that text.
                ws.send(json.dumps({"action": "interrupt"}))
                interrupt_sent = True
            try:
                raw = ws.recv(timeout=0.25)  # short, so a Ctrl-C is acted on promptly
            except TimeoutError:
                if grace_until is not None and time.monotonic() > grace_until:
                    return "error"
                continue
            frame = parts.join(json.loads(raw))
            if frame is None:
                continue  # a part of a frame larger than API Gateway's limit: the rest follows
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
        reason = frame["stopReason"]
        said = ", interrupted" if frame.get("interrupted") and reason != "interrupted" else ""
        print(f"\n[{turns} model {'reply' if turns == 1 else 'replies'}, {frame['durationMs']} ms, {usage['inputTokens']} in / "
              f"{usage['outputTokens']} out tokens, {cost}, {reason}{said}]", file=sys.stderr, flush=True)
    elif event == "error":
        print(f"\n[error {frame['code']}] {frame['message']}", file=sys.stderr)
    elif event == "status" and frame.get("status") not in ("queued", "running", "ready", "interrupting"):
        # (interrupting: the result line says "interrupted", once, after the text)
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
