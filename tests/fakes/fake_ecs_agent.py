"""The ECS agent's task protection endpoint, as a task sees it at $ECS_AGENT_URI.

`PUT /task-protection/v1/state` with `{"ProtectionEnabled": bool, "ExpiresInMinutes": n}`:
200 with `{"protection": {"ProtectionEnabled", "ExpirationDate", "TaskArn"}}`; a body it cannot
decode (unknown field, missing ProtectionEnabled, minutes outside 1..2880) is 400 with
`{"error": {"Code": "InvalidParameterException", "Message"}}`; ECS refusing it is 200 with
`{"failure": {"Arn", "Reason", "Detail"}}`. `GET` answers the current state. Shapes as in the
agent's TaskProtectionResponse (aws/amazon-ecs-agent, tmds handlers).

A test can make the next calls fail (`fail_next`), read every request (`requests`) and the state
(`enabled`, `expires_at`).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

# ECS_AGENT_URI is the agent's address plus a per-task path; the routes hang off that path.
AGENT_PATH = "/api/0123456789abcdef0-3161453721"
TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/sandbox/0123456789abcdef0"


class FakeEcsAgent:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.enabled = False
        self.expires_at: dt.datetime | None = None
        self._failures: list[str] = []
        self._lock = threading.Lock()

    def fail_next(self, *kinds: str) -> None:
        """Answer the next calls with these outcomes: "server" (500 error) or "failure" (ECS refused)."""
        with self._lock:
            self._failures.extend(kinds)

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ProtectionEnabled": self.enabled, "TaskArn": TASK_ARN}
        if self.expires_at is not None:
            state["ExpirationDate"] = self.expires_at.isoformat().replace("+00:00", "Z")
        return state

    async def put(self, request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
            assert isinstance(body, dict) and set(body) <= {"ProtectionEnabled", "ExpiresInMinutes"}
            assert isinstance(body.get("ProtectionEnabled"), bool)
            minutes = body.get("ExpiresInMinutes")
            assert minutes is None or (isinstance(minutes, int) and 1 <= minutes <= 2880)
        except (ValueError, AssertionError):
            return JSONResponse({"error": {"Code": "InvalidParameterException",
                                           "Message": "UpdateTaskProtection: failed to decode request"}}, status_code=400)
        with self._lock:
            self.requests.append(body)
            outcome = self._failures.pop(0) if self._failures else "ok"
            if outcome == "server":
                return JSONResponse({"error": {"Code": "ServerException", "Message": "Internal error"}}, status_code=500)
            if outcome == "failure":
                return JSONResponse({"failure": {"Arn": TASK_ARN, "Reason": "TASK_NOT_VALID",
                                                 "Detail": "The task is not part of a service"}})
            self.enabled = body["ProtectionEnabled"]
            self.expires_at = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes or 120)
                               if self.enabled else None)
            return JSONResponse({"protection": self._state()})

    async def get(self, request: Request) -> JSONResponse:
        with self._lock:
            return JSONResponse({"protection": self._state()})

    def app(self) -> Starlette:
        routes = [Route("/task-protection/v1/state", self.put, methods=["PUT"]),
                  Route("/task-protection/v1/state", self.get, methods=["GET"])]
        return Starlette(routes=[Mount(AGENT_PATH, routes=routes)])


@contextmanager
def running_ecs_agent() -> Iterator[tuple[FakeEcsAgent, str]]:
    """The fake agent on 127.0.0.1; yields (agent, ECS_AGENT_URI)."""
    from tests.support.sandbox_host import serve

    agent = FakeEcsAgent()
    with serve(agent.app()) as url:
        yield agent, url + AGENT_PATH
