"""The figures `scripts/bench_growth` prints: one row per cost that must not grow with the data.

Each area of the benchmark (conversation, skills, turn, workspace) measures its own costs and
returns `Figure`s; `table` lays them out the way the README's cost section shows them, so the
README's table is pasted from one run, never edited by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scripts.benchlib.latency_proxy import Traffic


@dataclass(frozen=True)
class Figure:
    """One measured cost at the sizes it was measured at, against its target."""

    area: str
    what: str
    #: size label -> measured value, e.g. {"message 10": "21 KB", "message 200": "23 KB"}
    measured: dict[str, str]
    target: str
    #: None: informational, with no target (not counted among the targets)
    met: bool | None


@dataclass(frozen=True)
class Totals:
    """Operations and bytes of a run of requests, split the way R2 bills them."""

    class_a: int
    class_b: int
    sent: int
    received: int

    @classmethod
    def of(cls, traffic: Iterable[Traffic]) -> Totals:
        """Class A = PUT, POST, LIST (a GET with `list-type` or on a bucket); Class B = GET, HEAD; deletes are free."""
        a = b = sent = received = 0
        for t in traffic:
            sent += t.sent
            received += t.received
            path, _, query = t.path.partition("?")
            listing = "list-type" in query or path.rstrip("/").count("/") <= 1
            if t.method in ("PUT", "POST") and "delete" not in query:
                a += 1
            elif t.method == "GET" and listing:
                a += 1
            elif t.method in ("GET", "HEAD"):
                b += 1
        return cls(a, b, sent, received)


def kb(n: float) -> str:
    """Bytes as the tables show them: KB (1,000) below a MB, MB above."""
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def table(figures: list[Figure]) -> str:
    """A markdown table of the figures, with a verdict column."""
    lines = ["| area | what | measured | target | met |", "|---|---|---|---|---|"]
    for f in figures:
        measured = "; ".join(f"{size}: {value}" for size, value in f.measured.items())
        lines.append(f"| {f.area} | {f.what} | {measured} | {f.target} | {_verdict(f.met)} |")
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "**no**"
