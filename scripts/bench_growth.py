"""Benchmark: the costs that must stay constant as a user's history, skills and files grow.

Runs each area's measurements (`scripts/benchlib/growth_*.py`) with storage 20 ms away (moto
behind a latency proxy in a child process, as R2 is from a Lambda) and prints one table: each
cost at the small and large sizes, its target, and whether it is met. The README's cost
section is pasted from this table.

    .venv/bin/python -m scripts.bench_growth              # every area, full sizes (a few minutes)
    .venv/bin/python -m scripts.bench_growth --quick      # smaller sizes, to check it runs
    .venv/bin/python -m scripts.bench_growth --area skills --area turn

Exits 1 when any target is missed, so a run says at a glance whether the product still holds.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AREAS = ("conversation", "turn", "skills", "workspace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: checks the benchmark runs, not the targets")
    parser.add_argument("--area", action="append", choices=AREAS, help="only these areas (repeatable); default: all")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from scripts.benchlib.growth import Figure, table

    figures: list[Figure] = []
    for area in args.area or AREAS:
        module = importlib.import_module(f"scripts.benchlib.growth_{area}")
        started = time.monotonic()
        found = module.measure(quick=args.quick)
        print(f"{area}: {len(found)} figures in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        figures.extend(found)
    print(table(figures))
    judged = [f for f in figures if f.met is not None]
    missed = [f for f in judged if not f.met]
    print(f"\n{len(judged) - len(missed)} of {len(judged)} targets met" + (" (--quick: sizes too small to judge)" if args.quick else ""))
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    raise SystemExit(main())
