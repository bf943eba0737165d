"""Usage metering: parallel turns add up to the exact sum (local store and S3 on moto), and the
report's days, totals and storage."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chalicelib.config import Settings
from chalicelib.services.usage import TurnUsage, UsageService
from chalicelib.storage.base import ObjectStore
from chalicelib.storage.factory import build_store
from chalicelib.storage.local import LocalDirectoryStore
from tests.support.api import Api
from tests.support.s3 import create_bucket, storage_settings

DAY = 1_800_000_000.0  # 2027-01-15 08:00 UTC


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalDirectoryStore(tmp_path)
    settings = storage_settings(request.getfixturevalue("moto_endpoint"), f"usage-{uuid.uuid4().hex[:12]}")
    create_bucket(settings)
    return build_store(Settings(storage=settings))


def test_fifty_parallel_metered_turns_add_up_to_the_exact_sum(store: ObjectStore) -> None:
    usage = UsageService(store, clock=lambda: DAY)
    costs = [round(0.001 * (i + 1) + 0.0000123 * i, 7) for i in range(50)]

    def meter(i: int) -> None:
        usage.record("alice", f"s{i % 7}", TurnUsage(turns=i % 3 + 1, input_tokens=1000 + i, output_tokens=10 * i,
                                                     cache_read_tokens=i, cache_creation_tokens=2 * i, cost_usd=costs[i]))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(meter, range(50)))
    report = usage.report("alice", None, None)
    day = report.days[0]
    assert day.date == "2027-01-15" and day.messages == 50
    assert day.turns == sum(i % 3 + 1 for i in range(50))
    assert day.input_tokens == sum(1000 + i for i in range(50)) and day.output_tokens == sum(10 * i for i in range(50))
    assert day.cache_read_tokens == sum(range(50)) and day.cache_creation_tokens == 2 * sum(range(50))
    assert day.cost_usd == pytest.approx(sum(costs), abs=1e-9) and day.sessions == 7
    assert usage.spent_today("alice") == pytest.approx(sum(costs), abs=1e-9)
    assert usage.spent_today("bob") == 0


def test_unpriced_turns_are_counted_apart_and_days_are_utc(tmp_path: Path) -> None:
    clock = {"now": DAY}
    usage = UsageService(LocalDirectoryStore(tmp_path), clock=lambda: clock["now"])
    usage.record("alice", "s1", TurnUsage(turns=1, input_tokens=1, output_tokens=1, cache_read_tokens=0,
                                          cache_creation_tokens=0, cost_usd=None))
    clock["now"] = DAY + 86_400
    usage.record("alice", "s1", TurnUsage(turns=2, input_tokens=1, output_tokens=1, cache_read_tokens=0,
                                          cache_creation_tokens=0, cost_usd=0.5))
    report = usage.report("alice", "2027-01-14", "2027-01-16")
    assert [(d.date, d.messages, d.unpriced_messages, d.cost_usd) for d in report.days] == [
        ("2027-01-14", 0, 0, 0.0), ("2027-01-15", 1, 1, 0.0), ("2027-01-16", 1, 0, 0.5)]
    assert report.total_cost_usd == 0.5


def test_usage_route(local_api: Api) -> None:
    assert local_api.post("/users/alice/skills", {"name": "a.md", "content": "x" * 100}).status_code == 200
    report = local_api.get("/users/alice/usage").json_body
    assert report["userId"] == "alice" and len(report["days"]) == 1 and report["days"][0]["messages"] == 0
    assert report["storageBytes"] >= 100
    for query in ("from=2027-13-01", "from=2027-01-02&to=2027-01-01", "from=2026-01-01&to=2026-12-31"):
        bad = local_api.get(f"/users/alice/usage?{query}")
        assert bad.status_code == 400, query


def test_a_day_metered_in_the_older_layout_still_counts_with_the_new_records(store: ObjectStore) -> None:
    # Before per-turn records, a day was one document updated by read-modify-write: the day's
    # listing finds it and adds it to the records metered since, in the report and the budget.
    import json

    from chalicelib.storage import layout

    old = {"messages": 2, "turns": 3, "input_tokens": 10, "output_tokens": 20, "cache_read_tokens": 1,
           "cache_creation_tokens": 2, "cost_usd": 0.25, "unpriced_messages": 1, "sessions": ["s0", "s1"]}
    store.put(layout.usage_key("alice", "2027-01-15"), json.dumps(old).encode())
    usage = UsageService(store, clock=lambda: DAY)
    usage.record("alice", "s1", TurnUsage(turns=1, input_tokens=5, output_tokens=5, cache_read_tokens=0,
                                          cache_creation_tokens=0, cost_usd=0.125), "turn-a")
    usage.record("alice", "s2", TurnUsage(turns=1, input_tokens=5, output_tokens=5, cache_read_tokens=0,
                                          cache_creation_tokens=0, cost_usd=0.125), "turn-b")
    usage.record("alice", "s2", TurnUsage(turns=1, input_tokens=5, output_tokens=5, cache_read_tokens=0,
                                          cache_creation_tokens=0, cost_usd=0.125), "turn-b")  # a retried write: once
    day = usage.report("alice", None, None).days[0]
    assert (day.messages, day.turns, day.input_tokens, day.output_tokens) == (4, 5, 20, 30)
    assert (day.unpriced_messages, day.sessions) == (1, 3)
    assert day.cost_usd == pytest.approx(0.5) and usage.spent_today("alice") == pytest.approx(0.5)
