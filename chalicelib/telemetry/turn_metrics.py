"""A turn's numbers as CloudWatch metrics: embedded metric format (EMF) lines on stdout.

Lambda ships stdout to CloudWatch Logs, which turns each line carrying an `_aws` block into
metric data points: no API call, no permission, nothing on the critical path but one write. The
runner feeds every event of a turn to `TurnMetrics.observe` and calls `publish` when the turn
ends:

- `Turns` (1), `TurnDurationMs` (the agent loop's), `TimeToFirstTokenMs` (from the runner taking
  the turn, sandbox and context included, to the model's first output: streamed text or
  thinking, or a tool call), `InputTokens`, `OutputTokens`, `CacheReadInputTokens`,
  `CacheCreationInputTokens` and `CostUSD` in one document, by `Model`;
- `TurnErrors` per `ErrorCode` (the code of each `error` event the client got);
- `ToolLatencyMs` per `Tool` (from a `tool_use` to its `tool_result`).

The session and turn ids ride along as properties (searchable in Logs Insights, not dimensions:
they would make a metric per turn). On in Lambda, or with METRICS_FORMAT=emf.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_NAMESPACE = "ClaudeAgent"
USAGE_METRICS = {"inputTokens": "InputTokens", "outputTokens": "OutputTokens",
                 "cacheReadInputTokens": "CacheReadInputTokens", "cacheCreationInputTokens": "CacheCreationInputTokens"}


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """EMF inside Lambda unless METRICS_FORMAT=off, and elsewhere when METRICS_FORMAT=emf."""
    env = os.environ if env is None else env
    fmt = env.get("METRICS_FORMAT", "").lower()
    return fmt == "emf" or (fmt != "off" and "AWS_LAMBDA_FUNCTION_NAME" in env)


class TurnMetrics:
    """What one turn measured; `publish` writes it as EMF documents."""

    def __init__(self, session_id: str, turn_id: str, *, namespace: str | None = None,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.session_id, self.turn_id = session_id, turn_id
        self.namespace = namespace or os.environ.get("METRICS_NAMESPACE") or DEFAULT_NAMESPACE
        self._write = write or _stdout
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self.first_token_ms: float | None = None
        self.errors: Counter[str] = Counter()
        self.tool_latency: defaultdict[str, list[float]] = defaultdict(list)
        self._tools_running: dict[str, tuple[str, float]] = {}
        self.result: dict[str, Any] | None = None

    def observe(self, event: Mapping[str, Any]) -> None:
        """Take note of one event the turn emitted."""
        now = self._clock()
        kind = event.get("event")
        with self._lock:
            if kind in ("stream", "tool_use") and self.first_token_ms is None:
                self.first_token_ms = (now - self._started) * 1000
            if kind == "tool_use" and event.get("id"):
                self._tools_running[str(event["id"])] = (str(event.get("name") or "unknown"), now)
            elif kind == "tool_result":
                running = self._tools_running.pop(str(event.get("tool_use_id")), None)
                if running is not None:
                    self.tool_latency[running[0]].append((now - running[1]) * 1000)
            elif kind == "error":
                self.errors[str(event.get("code") or "unknown")] += 1
            elif kind == "result":
                self.result = dict(event)

    def documents(self, timestamp_ms: int | None = None) -> list[dict[str, Any]]:
        """The EMF documents this turn makes (one for the turn, one per error code, one per tool)."""
        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        props = {"sessionId": self.session_id, "turnId": self.turn_id}
        with self._lock:
            result = self.result or {}
            model = str(result.get("model") or "unknown")
            turn: dict[str, Any] = {"Model": model, **props, "Turns": 1}
            metrics = [("Turns", "Count")]
            if "durationMs" in result:
                turn["TurnDurationMs"] = result["durationMs"]
                metrics.append(("TurnDurationMs", "Milliseconds"))
            if self.first_token_ms is not None:
                turn["TimeToFirstTokenMs"] = round(self.first_token_ms, 1)
                metrics.append(("TimeToFirstTokenMs", "Milliseconds"))
            usage = result.get("usage") or {}
            for wire, name in USAGE_METRICS.items():
                if isinstance(usage.get(wire), int):
                    turn[name] = usage[wire]
                    metrics.append((name, "Count"))
            if isinstance(result.get("costUsd"), (int, float)):
                turn["CostUSD"] = result["costUsd"]
                metrics.append(("CostUSD", "None"))
            out = [_emf(self.namespace, stamp, [["Model"], []], metrics, turn)]
            for code, count in sorted(self.errors.items()):
                out.append(_emf(self.namespace, stamp, [["ErrorCode"]], [("TurnErrors", "Count")],
                                {"ErrorCode": code, **props, "TurnErrors": count}))
            for tool, latencies in sorted(self.tool_latency.items()):
                out.append(_emf(self.namespace, stamp, [["Tool"]], [("ToolLatencyMs", "Milliseconds")],
                                {"Tool": tool, **props, "ToolLatencyMs": [round(v, 1) for v in latencies]}))
        return out

    def publish(self) -> None:
        """Write the documents, one line each; a failure to write never fails the turn."""
        try:
            for document in self.documents():
                self._write(json.dumps(document, separators=(",", ":"), default=str))
        except (OSError, ValueError):
            pass


def _emf(namespace: str, stamp: int, dimensions: list[list[str]], metrics: list[tuple[str, str]],
         members: dict[str, Any]) -> dict[str, Any]:
    return {"_aws": {"Timestamp": stamp, "CloudWatchMetrics": [{
        "Namespace": namespace, "Dimensions": dimensions,
        "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics]}]}, **members}


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
