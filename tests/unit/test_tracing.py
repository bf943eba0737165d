"""chalicelib.telemetry.tracing: off (and importing nothing of OpenTelemetry) without an OTLP
endpoint; with one, spans nest, carry the log ids, and cross processes by their traceparent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chalicelib.telemetry import log_context, tracing
from chalicelib.telemetry.json_logs import hashed_user

ROOT = Path(__file__).resolve().parents[2]

# A REST request and a whole turn's code path imported, in a fresh interpreter with no endpoint.
PROBE = """
import json, os, sys
for name in [n for n in os.environ if n.startswith("OTEL_")]:
    del os.environ[name]
os.environ.update(DATA_DIR=sys.argv[1], SANDBOX_ROOT=sys.argv[1] + "/sb")
from chalice.test import Client
import app
with Client(app.app, stage_name="dev", project_dir=".") as client:
    status = client.http.get("/health").status_code
after_rest = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
from chalicelib.telemetry import tracing
with tracing.span("turn") as span:
    span.set({"a": 1})
    carried = tracing.headers()
import chalicelib.agent.turn, chalicelib.storage.s3, chalicelib.sandbox.remote, chalicelib.realtime.dispatch  # noqa
after_turn = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
import anthropic  # noqa
by_anthropic = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
print(json.dumps({"status": status, "rest": after_rest, "turn": after_turn, "carried": carried,
                  "enabled": tracing.enabled()}))
"""


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["status"] == 200 and found["enabled"] is False and found["carried"] == {}
    # The REST path imports nothing of it at all.
    assert found["rest"] == []
    # The turn's modules import the Anthropic SDK, which itself imports OpenTelemetry's API (its
    # dependency, for its own optional spans): never the SDK, an exporter or protobuf.
    assert not [m for m in found["turn"] if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto"))]


def test_the_anthropic_sdk_alone_imports_the_same_api_modules(tmp_path: Path) -> None:
    """What the probe's turn path holds is exactly what `import anthropic` brings by itself."""
    code = ("import json, os, sys\n[os.environ.pop(n) for n in list(os.environ) if n.startswith('OTEL_')]\n"
            "import anthropic\nbare = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
            "import chalicelib.agent.turn, chalicelib.storage.s3, chalicelib.sandbox.remote, chalicelib.telemetry.tracing_aws\n"
            "from chalicelib.telemetry import tracing\nwith tracing.span('x'):\n    pass\n"
            "print(json.dumps([bare, sorted(m for m in sys.modules if m.startswith('opentelemetry'))]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    bare, ours = json.loads(result.stdout.strip().splitlines()[-1])
    assert ours == bare


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    assert tracing.configure({}, exporter=memory)
    try:
        yield memory
    finally:
        tracing.configure({})


def test_spans_nest_and_carry_the_log_ids(exporter: InMemorySpanExporter) -> None:
    with log_context.bound(sessionId="s1", userId="alice", turnId="t1"), tracing.span("turn", {"model": "m", "skip": None}):
        with tracing.span("tool bash") as tool:
            tool.fail("sandbox_error")
        storage = tracing.started("s3 GetObject", {"aws.s3.key": "k"}, kind="client")
        storage.end()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"turn", "tool bash", "s3 GetObject"}
    turn = spans["turn"]
    assert dict(turn.attributes or {}) == {"session.id": "s1", "user.id": "alice", "turn.id": "t1", "model": "m"}
    for child in ("tool bash", "s3 GetObject"):
        assert spans[child].parent is not None and spans[child].parent.span_id == turn.context.span_id
    assert spans["tool bash"].status.status_code.name == "ERROR" and spans["tool bash"].attributes["error.type"] == "sandbox_error"
    assert spans["s3 GetObject"].kind.name == "CLIENT"


def test_an_exception_through_a_span_marks_it_failed(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("model call"):
        raise ValueError("boom")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR" and span.events[0].name == "exception"


def test_a_traceparent_carries_the_trace_to_another_process(exporter: InMemorySpanExporter) -> None:
    with tracing.span("websocket message"):
        carrier = tracing.headers()
    assert carrier["traceparent"].startswith("00-")
    # The runner's side: a payload (or headers, any case) with the traceparent continues the trace.
    with tracing.continued({"sessionId": "s1", "TraceParent": carrier["traceparent"]}), tracing.span("turn runner"):
        pass
    sent, received = exporter.get_finished_spans()
    assert received.context.trace_id == sent.context.trace_id and received.parent.span_id == sent.context.span_id
    assert received.parent.is_remote
    with tracing.continued({}), tracing.continued(None), tracing.span("alone"):
        pass
    assert exporter.get_finished_spans()[-1].parent is None


def test_user_ids_are_hashed_as_in_the_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = InMemorySpanExporter()
    assert tracing.configure({"LOG_HASH_USER_IDS": "1"}, exporter=memory)
    try:
        with log_context.bound(userId="alice"), tracing.span("GET /users/{userId}/skills"):
            pass
    finally:
        tracing.configure({})
    assert memory.get_finished_spans()[0].attributes["user.id"] == hashed_user("alice")


def test_tracing_is_wanted_only_with_an_endpoint() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.configure({}) and not tracing.enabled() and tracing.headers() == {}


def test_the_embedded_store_makes_a_span_per_operation(exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    from chalicelib.storage.local import LocalDirectoryStore
    from chalicelib.telemetry.tracing_store import traced

    store = traced(LocalDirectoryStore(tmp_path))
    with tracing.span("turn"):
        store.put("users/u/a.json", b"{}")
        assert store.get("users/u/a.json").body == b"{}"
    names = [(s.name, (s.attributes or {}).get("storage.key")) for s in exporter.get_finished_spans()]
    assert names == [("local put", "users/u/a.json"), ("local get", "users/u/a.json"), ("turn", None)]
    tracing.configure({})
    plain = LocalDirectoryStore(tmp_path)
    assert traced(plain) is plain  # off: the store itself, nothing wrapped
