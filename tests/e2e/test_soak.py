"""The soak (issue 21): several users talk at once while their connections drop and the server
is killed with SIGKILL and restarted; at the end every invariant is checked.

One local gateway process (what ./scripts/dev execs) at a time, in a scrubbed environment, on
one DATA_DIR, with the fake Messages API in this process. Each user has a session and a client
thread that sends its messages one after another, each with a `messageId`, and waits for its
`result`. A client drops its connection now and then (mid-turn or just after the `queued`
acknowledgement) and comes back with `resume`; a message whose acknowledgement it never saw is
sent again with the same id. Meanwhile the server is killed (kill -9 of its process group) a
few times and started again on the same port.

Invariants, checked through the REST API and the store once everything is idle:
- every acknowledged message is stored exactly once (none lost, none duplicated), and answered
  once, unless the client was told its turn was cut off (`turn_cut_off`, a kill mid-turn);
- no session is left with a running turn or a queued prompt;
- nothing is left behind: no conversation part the conversation does not name, no event log but
  the last turn's, no sandbox process once the server has stopped.

Counts and each kill's time to recover are printed (run with -s to see them). Bounded: about
90 s of wall time, every loop bounded in count and time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from chalicelib.services.conversations import ConversationsService
from chalicelib.storage import layout
from chalicelib.storage.listing import iter_all
from chalicelib.storage.local import LocalDirectoryStore
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, Text
from tests.support.dev_server import devserver
from tests.support.sandbox_host import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

USERS = 4
KILLS = 3
TALK_SECONDS = 40  # clients start new messages for this long; kills happen inside it
DRAIN_SECONDS = 40  # then every message in flight must finish within this
LEASE_SECONDS = 3
DISCONNECT_CHANCE = 0.25  # per message, a client drops its connection once
UNATTRIBUTED_WAIT = 3.0  # seconds a client waits for a `running` after a turn's end it cannot place


def model(body: dict[str, Any]) -> Reply:
    """Answers name the prompt they answer, so the stored conversation shows what answered what."""
    last = body["messages"][-1]["content"]
    # (The last text: a prompt left unanswered by a kill is sent together with the next one.)
    text = last if isinstance(last, str) else ([b.get("text", "") for b in last if b.get("type") == "text"] or [""])[-1]
    return Reply([Text(f"answer to {text}", chunks=8)], delay=0.03)


@dataclass
class Client:
    """One user's client: its messages, what it heard, and how often it was cut off."""

    user: str
    session: str
    ws_url: str
    acknowledged: list[str] = field(default_factory=list)  # message ids answered `queued`
    completed: list[str] = field(default_factory=list)  # message ids whose turn ended
    cut_off: set[str] = field(default_factory=set)  # told `turn_cut_off` for these
    disconnects: int = 0
    refused_connects: int = 0  # 429 too_many_connections
    stale_repairs: int = 0  # repairs of a turn whose result it had heard (killed before recording its end)
    reconnects: int = 0
    failures: list[str] = field(default_factory=list)
    completed_at: list[float] = field(default_factory=list)
    last_seq: int = 0
    ws: ClientConnection | None = None
    ws_stack: ExitStack = field(default_factory=ExitStack)
    trace: list[str] = field(default_factory=list)  # what it heard, for a failure's report

    def prompt(self, n: int) -> str:
        return f"{self.user} message {n}"

    def message_id(self, n: int) -> str:
        return f"{self.user}-m{n}"


class Soak:
    def __init__(self, clients: list[Client], talk_until: float, drain_until: float, seed: int) -> None:
        self.clients = clients
        self.talk_until = talk_until
        self.drain_until = drain_until
        self.random = random.Random(seed)
        self.lock = threading.Lock()

    def run(self, client: Client) -> None:
        try:
            n = 0
            while time.monotonic() < self.talk_until and n < 200:
                self._one_message(client, n)
                n += 1
        except Exception as exc:  # noqa: BLE001 - reported and asserted on by the test
            client.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._drop(client)

    def _chance(self, p: float) -> bool:
        with self.lock:
            return self.random.random() < p

    def _ensure_connected(self, client: Client) -> ClientConnection:
        """Connect (again), resuming after the last seq seen; retried while the server restarts."""
        if client.ws is not None:
            return client.ws
        for _ in range(400):  # bounded: the deadline below ends it first
            if time.monotonic() > self.drain_until:
                raise TimeoutError("could not reconnect before the deadline")
            try:
                stack = ExitStack()
                ws = stack.enter_context(connect(client.ws_url, open_timeout=3, close_timeout=0.2))
            except InvalidStatus as refused:
                # 429: the connection cap, with connections a killed server left counted (they are
                # forgotten once the gateway says they are gone); anything else is a failure.
                if refused.response.status_code != 429:
                    client.failures.append(f"connect refused: {refused.response.status_code}")
                client.refused_connects += 1
                time.sleep(0.2)
                continue
            except (OSError, InvalidHandshake, TimeoutError):
                time.sleep(0.2)
                continue
            client.reconnects += 1
            client.trace.append(f"reconnect afterSeq={client.last_seq}")
            ws.send(json.dumps({"action": "resume", "afterSeq": client.last_seq}))
            client.ws, client.ws_stack = ws, stack
            return ws
        raise TimeoutError("could not reconnect")

    def _drop(self, client: Client) -> None:
        with suppress(Exception):
            client.ws_stack.close()
        client.ws = None

    def _one_message(self, client: Client, n: int) -> None:
        """Send message n and wait for its turn's end. Every turn that ends while this message is
        out is its turn: the client sends the next one only after that (one at a time)."""
        message_id, prompt = client.message_id(n), client.prompt(n)
        frame = json.dumps({"action": "message", "prompt": prompt, "messageId": message_id})
        acknowledged = finished = sent = rerun = False
        running_for: str | None = None  # the message the last `running` status named
        # A turn's end heard without its `running` (a repair's events carry no messageId): whose
        # it was is asked of the stored history if no `running` of ours follows within a moment.
        unattributed_at: float | None = None
        history_asked = False
        will_drop = self._chance(DISCONNECT_CHANCE)
        for _ in range(100_000):  # bounded by the deadline
            if acknowledged and finished:
                client.completed.append(message_id)
                client.completed_at.append(time.monotonic())
                return
            if time.monotonic() > self.drain_until:
                raise TimeoutError(f"{message_id}: no result before the deadline")
            wait = 10.0 if unattributed_at is None else UNATTRIBUTED_WAIT - (time.monotonic() - unattributed_at)
            try:
                ws = self._ensure_connected(client)
                if not sent:
                    ws.send(frame)
                    sent = True
                if wait <= 0:
                    unattributed_at, history_asked = None, True
                    ws.send(json.dumps({"action": "get_history"}))
                    continue
                event = json.loads(ws.recv(timeout=wait))
            except TimeoutError:
                if unattributed_at is not None:
                    continue  # time to ask the history
                self._drop(client)  # nothing for 10 s: as below
                sent = acknowledged
                continue
            except (ConnectionClosed, OSError):
                # The server went away (killed) or said nothing for 10 s: reconnect, resume, and
                # send again unless acknowledged (the same id: never run twice).
                self._drop(client)
                sent = acknowledged
                if history_asked:  # its answer is lost with the connection: ask again
                    unattributed_at, history_asked = time.monotonic() - UNATTRIBUTED_WAIT, False
                continue
            if event.get("seq"):
                if event["seq"] <= client.last_seq:
                    continue  # heard already: a resume's replay can overlap what came live (README)
                client.last_seq = event["seq"]
            kind, code = event["event"], event.get("code")
            if kind != "stream":
                client.trace.append(f"{message_id} {kind} {event.get('status') or code or ''} seq={event.get('seq')} "
                                    f"id={event.get('messageId')} {event.get('message', '')[:60]}")
            if kind == "status" and event.get("status") == "queued" and event.get("messageId") == message_id:
                if not acknowledged:
                    client.acknowledged.append(message_id)
                acknowledged = True
                if will_drop and self._chance(0.5):  # drop right after the acknowledgement
                    will_drop = False
                    client.disconnects += 1
                    self._drop(client)
            elif kind == "stream" and will_drop:  # or mid-turn
                will_drop = False
                client.disconnects += 1
                self._drop(client)
            elif kind == "status" and event.get("status") == "running":
                running_for, unattributed_at = event.get("messageId"), None
                if running_for != message_id:
                    client.failures.append(f"{message_id}: a turn ran {running_for} meanwhile")
            elif running_for != message_id and kind in ("error", "result") and event.get("seq"):
                if kind == "result":
                    unattributed_at = time.monotonic()
            elif kind == "history":
                history_asked = False
                said = [t for m in event["messages"] if m["role"] == "user" for t in _texts(m)]
                answered = [t for m in event["messages"] if m["role"] == "assistant" for t in _texts(m)]
                if prompt not in said:
                    # The repair of the previous turn, killed after its `result` went out but
                    # before its end was recorded: the client had its answer already.
                    client.stale_repairs += 1
                else:
                    # Ours, cut off after its prompt was saved (and before its `running` was logged).
                    if f"answer to {prompt}" not in answered:
                        client.cut_off.add(message_id)
                    finished = True
            elif kind == "error" and code == "turn_cut_off":
                # Cut off by a kill: run again when its prompt had not been read, else told so.
                if "runs again" in event.get("message", ""):
                    rerun = True
                else:
                    client.cut_off.add(message_id)
            elif kind == "error" and not event.get("seq"):
                client.failures.append(f"{message_id}: {code}: {event.get('message')}")
            elif kind == "result":
                finished, rerun = finished or not rerun, False
        raise AssertionError("unreachable: the loop is bounded by the deadline")


def _texts(message: dict[str, Any]) -> list[str]:
    content = message["content"]
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]


def _sandbox_processes(root: Path) -> list[int]:
    """Processes whose command line names this test's sandbox root (left behind if any)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            if str(root).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def test_soak_kill_9_disconnects_and_several_users(tmp_path: Path) -> None:
    started = time.monotonic()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    data, sandboxes, log = tmp_path / "data", tmp_path / "sb", tmp_path / "dev.log"
    kills: list[dict[str, float]] = []
    with FakeAnthropic() as fake:
        fake.script(*([model] * 5000))
        env = {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
            "DATA_DIR": str(data), "SANDBOX_ROOT": str(sandboxes), "TURN_LEASE_SECONDS": str(LEASE_SECONDS),
            # One connection per client at a time: the kills' dead connections must not lock it out.
            "WS_CONNECTIONS_PER_SESSION": "2",
            "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_MAX_RETRIES": "1",
        }
        server = devserver(port, env, log)
        proc = server.__enter__()
        try:
            clients = []
            for n in range(USERS):
                setup = httpx.post(f"{api}/setup/soak-s{n}?userId=soak-u{n}", timeout=60).json()
                clients.append(Client(f"soak-u{n}", f"soak-s{n}", f"{setup['websocketUrl']}&token={setup['token']}"))
            talk_until = time.monotonic() + TALK_SECONDS
            soak = Soak(clients, talk_until, talk_until + DRAIN_SECONDS, seed=int(os.environ.get("SOAK_SEED", "21")))
            threads = [threading.Thread(target=soak.run, args=(c,), name=f"soak-{c.user}", daemon=True) for c in clients]
            for thread in threads:
                thread.start()
            for k in range(KILLS):
                time.sleep(TALK_SECONDS / (KILLS + 1) - (2 if k else 0))
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                proc.wait(timeout=10)
                server = devserver(port, env, log)
                proc = server.__enter__()
                kills.append({"killed_at": killed_at, "serving_after": time.monotonic() - killed_at})
            for thread in threads:
                thread.join(timeout=max(1.0, soak.drain_until - time.monotonic() + 5))
            assert not any(t.is_alive() for t in threads), "a client never finished"
            for kill in kills:
                # Recovered: every client has completed a message since the kill.
                after = [min((t for t in c.completed_at if t > kill["killed_at"]), default=float("nan")) for c in clients]
                kill["recovered_after"] = max(after) - kill["killed_at"]
            invariants = _check_invariants(api, data, clients)
        finally:
            server.__exit__(None, None, None)
    time.sleep(1)  # the stopped server's sandboxes are given back as it exits
    leftover_processes = _sandbox_processes(sandboxes)

    totals = {
        "users": USERS, "messages acknowledged": sum(len(c.acknowledged) for c in clients),
        "completed": sum(len(c.completed) for c in clients), "kills": len(kills),
        "disconnects": sum(c.disconnects for c in clients), "reconnects": sum(c.reconnects for c in clients),
        "cut off (told)": sum(len(c.cut_off) for c in clients),
        "repairs of a finished turn": sum(c.stale_repairs for c in clients),
        "connects refused (cap)": sum(c.refused_connects for c in clients), **invariants,
        "sandbox processes left": len(leftover_processes), "wall s": round(time.monotonic() - started, 1),
    }
    print("\nsoak:", json.dumps(totals))
    for client in clients:
        (tmp_path / f"trace-{client.user}.txt").write_text("\n".join(client.trace))
    for n, kill in enumerate(kills):
        print(f"kill {n + 1}: serving again after {kill['serving_after']:.1f} s, "
              f"every client answered again after {kill['recovered_after']:.1f} s")
    assert [f for c in clients for f in c.failures] == []
    assert invariants["lost"] == 0 and invariants["duplicated"] == 0 and invariants["unanswered"] == 0, totals
    assert invariants["stuck"] == 0 and invariants["orphaned parts"] == 0 and invariants["stale event logs"] == 0, totals
    assert leftover_processes == [], totals
    assert len(kills) == KILLS and all(k["recovered_after"] == k["recovered_after"] for k in kills), kills  # not NaN
    assert totals["messages acknowledged"] >= USERS * 3 and totals["disconnects"] > 0


def _settle(store: LocalDirectoryStore, clients: list[Client], timeout: float) -> None:
    """Wait (bounded) until no session records a turn or a queued prompt: a runner sends `result`
    just before it records the turn's end, so the last turn may still be closing. One that does
    not settle within `timeout` (several leases) is stuck, and counted so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [json.loads(store.get(layout.session_key(c.session, "state.json")).body) for c in clients]
        if all(s.get("turn") is None and not s.get("queue") for s in states):
            return
        time.sleep(0.2)


def _check_invariants(api: str, data: Path, clients: list[Client]) -> dict[str, int]:
    store = LocalDirectoryStore(data)
    _settle(store, clients, timeout=5 * LEASE_SECONDS)
    lost = duplicated = unanswered = stuck = orphaned = stale_events = counted = 0
    for client in clients:
        response = httpx.get(f"{api}/users/{client.user}/conversations/{client.session}", timeout=30)
        assert response.status_code == 200, response.text
        messages = response.json()["conversation"]["messages"]
        user_texts = [t for m in messages if m["role"] == "user" for t in _texts(m)]
        answers = [t for m in messages if m["role"] == "assistant" for t in _texts(m)]
        for message_id in client.acknowledged:
            prompt = client.prompt(int(message_id.rsplit("-m", 1)[1]))
            stored = user_texts.count(prompt)
            answered = answers.count(f"answer to {prompt}")
            lost += stored == 0
            duplicated += stored > 1 or answered > 1
            if stored == 1 and answered == 0 and message_id not in client.cut_off:
                unanswered += 1
                client.trace.append(f"UNANSWERED {message_id}")
        state = json.loads(store.get(layout.session_key(client.session, "state.json")).body)
        if state.get("turn") is not None or state.get("queue"):
            stuck += 1
            client.trace.append(f"STUCK {json.dumps({k: state.get(k) for k in ('turn', 'queue', 'lastTurnId')})}")
        events = layout.session_prefix(client.session) + "events/"
        logged = {o.key[len(events):].split("/", 1)[0] for o in iter_all(store, events)}
        stale = logged - {state.get("lastTurnId")}
        if stale:  # a runner and a repair both prune the turn before theirs when they record an end
            stale_events += len(stale)
            client.trace.append(f"STALE EVENTS {sorted(logged)} last turn {state.get('lastTurnId')}")
        counted += len(state.get("connections") or [])
        head = json.loads(store.get(layout.conversation_key(client.user, client.session)).body)
        parts = {o.key for o in iter_all(store, layout.conversation_parts_prefix(client.user, client.session))}
        orphaned += len(parts - ConversationsService(store).parts.named(client.user, client.session, head))
    return {"lost": lost, "duplicated": duplicated, "unanswered": unanswered, "stuck": stuck,
            "orphaned parts": orphaned, "stale event logs": stale_events,
            "connections still counted": counted}
