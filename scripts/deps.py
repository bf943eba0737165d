"""The dependency locks: which ranges compile into which lock, and the checks on them.

Humans edit the ranges in `*.in`; `./scripts/lock` compiles each into its `*.txt` lock (exact
versions and every file's hash, one universal resolution for Python 3.11) and every install
reads the locks with `--require-hashes`. The test suite's lock is compiled first, as it is the
superset of the others; the other three are compiled against it as a constraint, so a package
has one version in every lock: what the tests ran is what the Lambda, the gateway and the
sandbox host ship.

    python -m scripts.deps lock [--upgrade]   # ./scripts/lock; --upgrade takes the newest allowed
    python -m scripts.deps upgrade            # ./scripts/upgrade-deps: re-lock, run the suite, print what changed
    python -m scripts.deps check [LOCK]       # the installed packages against LOCK (default the test suite's)
    python -m scripts.deps prune LOCK         # uninstall what LOCK does not hold (bootstrap, for the test lock)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"
# Installed by `python -m venv` itself, never locked: pip would refuse to pin what it runs on.
VENV_SEED = frozenset({"pip", "setuptools", "wheel"})


@dataclass(frozen=True)
class LockSet:
    """One set of ranges and the lock compiled from them."""

    name: str
    source: str  # the ranges, relative to ROOT
    lock: str  # the lock, relative to ROOT
    # Compiled against the test suite's lock (one version of a package everywhere); a tool that
    # runs in an environment of its own is not.
    constrained: bool = True


# The test suite's set comes first: the others are compiled with its lock as a constraint.
LOCK_SETS = (
    LockSet("tests", "requirements-dev.in", "requirements-dev.txt"),
    LockSet("lambda", "requirements.in", "requirements.txt"),
    LockSet("gateway", "requirements-local.in", "requirements-local.txt"),
    LockSet("sandbox host", "sandbox_host/requirements.in", "sandbox_host/requirements.txt"),
    # Added to the Lambda package only by `./scripts/package --with-otel` (scripts/lambda_package.py).
    LockSet("otel", "requirements-otel.in", "requirements-otel.txt"),
    LockSet("checkov", "requirements-checkov.in", "requirements-checkov.txt", constrained=False),
)
SUPERSET = LOCK_SETS[0]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;([^\\]*))?")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path, *, here_only: bool = False) -> dict[str, str]:
    """{canonical name: version} of every package a lock file pins; with `here_only`, only those
    whose environment marker holds for this interpreter and platform (what pip installs here)."""
    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match and not (here_only and match.group(3) and not _applies(match.group(3))):
            found[canonical(match.group(1))] = match.group(2)
    return found


def _applies(marker: str) -> bool:
    # Imported here: `packaging` is in every lock, but not in the Python that first runs bootstrap.
    from packaging.markers import Marker

    return Marker(marker.strip()).evaluate()


def installed() -> dict[str, str]:
    """{canonical name: version} of every distribution in this interpreter's environment."""
    return {canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def differences(lock: Path, present: dict[str, str], *, extras_allowed: bool) -> list[str]:
    """What differs between a lock and an environment, one line each (empty when they agree)."""
    wanted = pins(lock, here_only=True)
    lines = [f"{name}: locked {version}, installed {present.get(name, 'nothing')}"
             for name, version in sorted(wanted.items()) if present.get(name) != version]
    if not extras_allowed:
        lines += [f"{name}: installed {version}, not in {lock.name}"
                  for name, version in sorted(present.items()) if name not in wanted and name not in VENV_SEED]
    return lines


def _uv() -> str:
    local = ROOT / ".venv/bin/uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if not found:
        raise SystemExit("uv is not installed: run ./scripts/test once (it installs the test lock, uv included), "
                         "or `pip install uv`.")
    return found


def lock(upgrade: bool = False) -> None:
    """Compile every set into its lock; without `upgrade`, a pin changes only when its range
    no longer allows it or a package is added or removed."""
    for lock_set in LOCK_SETS:
        command = [_uv(), "pip", "compile", "--quiet", "--universal", "--python-version", PYTHON_VERSION,
                   "--generate-hashes", "--custom-compile-command", "./scripts/lock",
                   lock_set.source, "-o", lock_set.lock]
        if lock_set is not SUPERSET and lock_set.constrained:
            command += ["-c", SUPERSET.lock]
        if upgrade:
            command.append("--upgrade")
        print(f"==> locking {lock_set.name}: {lock_set.source} -> {lock_set.lock}", file=sys.stderr)
        subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "UV_NO_CONFIG": "1"})


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Added, removed and moved pins, one line each."""
    names = sorted(set(before) | set(after))
    return [f"{name}: {before.get(name, '-')} -> {after.get(name, '-')}"
            for name in names if before.get(name) != after.get(name)]


def upgrade() -> int:
    """Re-lock to the newest allowed versions, install them, run the whole suite, and print
    what moved. The locks are left changed either way: commit them when the suite passed, or
    `git checkout -- '*.txt'` to go back."""
    before = pins(ROOT / SUPERSET.lock)
    lock(upgrade=True)
    moved = changes(before, pins(ROOT / SUPERSET.lock))
    print("\n".join(["==> what changed in the locks:", *(moved or ["nothing: every pin is already the newest allowed"])]))
    if not moved:
        return 0
    suite = subprocess.run(["./scripts/test", "-q"], cwd=ROOT)
    print("\n".join(["==> what changed in the locks:", *moved]))
    verdict = "passed: commit the locks" if suite.returncode == 0 else \
        "FAILED: fix the code or narrow the ranges in the *.in files; `git checkout -- '*.txt'` restores the old locks"
    print(f"==> the suite {verdict}")
    return suite.returncode


def prune(lock_file: Path) -> None:
    """Uninstall what the environment holds beyond the lock (a package an older lock had)."""
    extra = sorted(set(installed()) - set(pins(lock_file, here_only=True)) - VENV_SEED)
    if extra:
        print(f"==> removing what {lock_file.name} no longer holds: {' '.join(extra)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.deps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock").add_argument("--upgrade", action="store_true", help="take the newest allowed versions")
    sub.add_parser("upgrade")
    check = sub.add_parser("check")
    check.add_argument("lock", nargs="?", default=SUPERSET.lock)
    sub.add_parser("prune").add_argument("lock")
    args = parser.parse_args(argv)
    if args.command == "lock":
        lock(args.upgrade)
        return 0
    if args.command == "upgrade":
        return upgrade()
    if args.command == "prune":
        prune(ROOT / args.lock)
        return 0
    diff = differences(ROOT / args.lock, installed(), extras_allowed=args.lock != SUPERSET.lock)
    print("\n".join(diff or [f"the environment matches {args.lock}"]))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
