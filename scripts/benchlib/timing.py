"""Timing helpers shared by the benchmark scripts: time a call over rounds, print one row."""

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
