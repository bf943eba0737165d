"""The dependency locks: what is installed is exactly the test suite's lock, every lock agrees
with it, every pin has its hashes, and every lock still satisfies the ranges it was compiled
from (a range edited without `./scripts/lock` fails here, not on a user's machine)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts.deps import LOCK_SETS, ROOT, SUPERSET, canonical, changes, differences, installed, pins


def test_the_environment_is_exactly_the_test_lock() -> None:
    assert differences(ROOT / SUPERSET.lock, installed(), extras_allowed=False) == []
    check = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_package_that_moved_or_is_not_locked_is_reported(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("anthropic==2.17.0 \\\n    --hash=sha256:00\nPyYAML==6.0.4 \\\n    --hash=sha256:11\n")
    present = {"anthropic": "2.18.0", "pyyaml": "6.0.4", "requests": "2.34.2"}
    assert differences(lock, present, extras_allowed=False) == [
        "anthropic: locked 2.17.0, installed 2.18.0", "requests: installed 2.34.2, not in lock.txt"]
    assert differences(lock, present, extras_allowed=True) == ["anthropic: locked 2.17.0, installed 2.18.0"]
    assert changes({"a": "1", "b": "2"}, {"b": "3", "c": "1"}) == ["a: 1 -> -", "b: 2 -> 3", "c: - -> 1"]


@pytest.mark.parametrize("lock_set", LOCK_SETS, ids=[s.name for s in LOCK_SETS])
def test_each_lock_pins_every_package_with_hashes_at_the_test_locks_version(lock_set) -> None:  # type: ignore[no-untyped-def]
    text = (ROOT / lock_set.lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])  # after uv's two header lines
    for entry in entries:
        if entry.strip():
            assert "==" in entry.split()[0] and "--hash=sha256:" in entry, f"{lock_set.lock}: {entry.splitlines()[0]}"
    locked, superset = pins(ROOT / lock_set.lock), pins(ROOT / SUPERSET.lock)
    assert locked
    if lock_set.constrained:
        assert {n: superset.get(n) for n in locked} == locked


def _requirements(source: Path) -> list[Requirement]:
    found: list[Requirement] = []
    for line in source.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            found += _requirements(source.parent / line[2:].strip())
        elif line:
            found.append(Requirement(line))
    return found


@pytest.mark.parametrize("lock_set", LOCK_SETS, ids=[s.name for s in LOCK_SETS])
def test_each_lock_satisfies_the_ranges_it_was_compiled_from(lock_set) -> None:  # type: ignore[no-untyped-def]
    locked = pins(ROOT / lock_set.lock)
    for requirement in _requirements(ROOT / lock_set.source):
        version = locked.get(canonical(requirement.name))
        assert version is not None, f"{requirement} is in {lock_set.source} but not in {lock_set.lock}: run ./scripts/lock"
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{lock_set.lock} pins {requirement.name}=={version}, outside {requirement}: run ./scripts/lock"
