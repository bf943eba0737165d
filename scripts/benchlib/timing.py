"""Timing helpers shared by the benchmark scripts: time a call over rounds, print one row, and
count the sequential storage round trips in a proxy's request log."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    """Milliseconds of each of `rounds` calls."""
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def show(label: str, samples: list[float]) -> None:
    """One row: the label, then the median, min and max of `samples` in ms."""
    print(f"{label:<58} median {statistics.median(samples):8.2f} ms   min {min(samples):8.2f}   max {max(samples):8.2f}   (n={len(samples)})")


def median_ms(runs: int, step: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    """The median milliseconds of `runs` calls of `step`, each after an untimed `before`."""
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def critical_path(requests: list[tuple[float, float, str, str]]) -> int:
    """The longest chain of requests in which each starts after the previous one was answered
    (the latency proxy's log: arrived, answered, client, request line)."""
    ordered = sorted(requests)
    chain: list[int] = []
    for i, (start, *_) in enumerate(ordered):
        chain.append(1 + max((chain[j] for j in range(i) if ordered[j][1] <= start), default=0))
    return max(chain, default=0)


def skill_text(i: int) -> str:
    """A flat skill of about 1.5 KB, a typical size for a markdown instruction file."""
    return f"# Skill {i}\n\nUse this when task {i} comes up.\n\n" + "".join(f"- step {n}: do the thing carefully.\n" for n in range(40))
