"""A terminal client: set up a session for a user, connect, send prompts, stream the answers.

    ./scripts/chat --user alice "What skills do I have?"     # one prompt, then exit
    ./scripts/chat --user alice                              # interactive; Ctrl-D to quit
    ./scripts/chat --url https://API --api-key KEY --user alice "..."
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", help="send this prompt and exit (interactive when omitted)")
    parser.add_argument("--user", required=True, help="the userId whose skills and history to use")
    parser.add_argument("--session", help="sessionId (default: a new one)")
    parser.add_argument("--conversation", help="continue this conversationId")
    parser.add_argument("--model", help="model for this session")
    parser.add_argument("--max-turns", type=int)
    parser.add_argument("--url", default=os.environ.get("AGENT_API_URL", "http://127.0.0.1:8000"), help="REST base URL")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"), help="API key (default: $API_KEY)")
    args = parser.parse_args(argv)

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    session = args.session or f"chat-{uuid.uuid4().hex[:8]}"
    try:
        setup = httpx.post(f"{args.url.rstrip('/')}/setup/{session}", params={"userId": args.user}, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url} ({exc}). Is ./scripts/dev running?", file=sys.stderr)
        return 1
    if setup.status_code != 200:
        print(f"error: setup failed ({setup.status_code}): {setup.text}", file=sys.stderr)
        return 1
    info = setup.json()
    print(f"[session {session}: {info['setupMethod']}, {len(info['skillsLoaded'])} skill files]", file=sys.stderr)
    with connect(f"{info['websocketUrl']}&token={info['token']}", max_size=2**24) as ws:
        start: dict[str, Any] = {"action": "start"}
        if args.model:
            start["model"] = args.model
        if args.max_turns:
            start["maxTurns"] = args.max_turns
        if args.conversation:
            start["conversationId"] = args.conversation
        ws.send(json.dumps(start))
        if not show_until(ws, {"status"}):
            return 1
        prompts = [args.prompt] if args.prompt else _interactive()
        for prompt in prompts:
            ws.send(json.dumps({"action": "message", "prompt": prompt}))
            if not show_until(ws, {"result"}):
                return 1
    return 0


def _interactive():  # type: ignore[no-untyped-def]
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            return
        if line:
            yield line


def show_until(ws: ClientConnection, stop: set[str]) -> bool:
    """Print frames until one of `stop` arrives; False after an error that ends the exchange."""
    for _ in range(1_000_000):
        frame = json.loads(ws.recv(timeout=900))
        event = frame["event"]
        if event == "stream":
            print(frame["content"], end="", flush=True)
        elif event == "tool_use":
            print(f"\n  ⚙ {frame['name']} {json.dumps(frame['input'])[:200]}", flush=True)
        elif event == "permission_request":
            answer_permission(ws, frame)
        elif event == "permission_resolved" or (event == "status" and frame.get("status") == "permission_received"):
            if frame.get("reason") in ("timeout", "interrupted"):
                print(f"  [{frame['name']}: not run ({frame['reason']})]", file=sys.stderr, flush=True)
        elif event == "tool_result":
            content = frame["content"] if isinstance(frame["content"], str) else json.dumps(frame["content"])
            first = (content or "").strip().splitlines()[:3]
            mark = "✗" if frame.get("is_error") else "→"
            print("  " + mark + " " + "\n    ".join(first)[:300], flush=True)
        elif event == "result":
            cost = f"${frame['costUsd']:.4f}" if frame.get("costUsd") is not None else "cost unknown"
            usage = frame["usage"]
            print(f"\n[{frame['turns']} turns, {frame['durationMs']} ms, {usage['inputTokens']} in / "
                  f"{usage['outputTokens']} out tokens, {cost}, {frame['stopReason']}]", file=sys.stderr)
        elif event == "error":
            print(f"\n[error {frame['code']}] {frame['message']}", file=sys.stderr)
            if frame["seq"] == 0:
                return False
        elif event == "status" and frame.get("status") not in ("queued", "running", "ready"):
            print(f"\n[{frame.get('status')}] {frame.get('message', '')}", file=sys.stderr)
        if event in stop:
            return True
    return False


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
