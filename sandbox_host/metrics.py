"""The host's load as CloudWatch metrics: embedded metric format (EMF) lines on stdout.

The task's log driver ships stdout to CloudWatch Logs, which turns each line carrying an `_aws`
block into metric data points: no API call, no credentials. Every host reports under the one
`ServiceName` dimension, so the Average of `Sessions` over a minute is the sessions per host the
service's target tracking scales on, and `Host` (a property, not a dimension) finds the task in
Logs Insights.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from pydantic import BaseModel, ConfigDict, Field


class MetricsSettings(BaseModel):
    """Where the host's metrics go and what it says its capacity is."""

    model_config = ConfigDict(frozen=True)
    namespace: str = "ClaudeAgent/SandboxHosts"
    service: str = "sandbox-hosts"
    # Sessions this host is sized for (README, "Sessions per host, measured"); scaling targets less.
    capacity: int = Field(default=100, ge=1)
    interval_seconds: float = Field(default=60.0, gt=0)


def emf_line(settings: MetricsSettings, host: str, sessions: int, busy: int, draining: bool,
             timestamp_ms: int | None = None) -> str:
    """One EMF document: Sessions, BusySessions and Capacity (Count) for this host."""
    document = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": settings.namespace,
                "Dimensions": [["ServiceName"]],
                "Metrics": [{"Name": "Sessions", "Unit": "Count"}, {"Name": "BusySessions", "Unit": "Count"},
                            {"Name": "Capacity", "Unit": "Count"}],
            }],
        },
        "ServiceName": settings.service,
        "Host": host,
        "Draining": draining,
        "Sessions": sessions,
        "BusySessions": busy,
        "Capacity": settings.capacity,
    }
    return json.dumps(document, separators=(",", ":"))


def publish(line: str, stream: TextIO | None = None) -> None:
    """Write one line to stdout at once (a buffered line would reach CloudWatch late or never)."""
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()
