"""OpenTelemetry traces, exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Without that variable (the default) every function here is a no-op that imports nothing of
OpenTelemetry, so a cold start pays nothing for tracing; the Lambda package then need not carry
the SDK at all (`./scripts/package --with-otel` adds it). With it, the SDK is configured on first
use: a BatchSpanProcessor feeding the OTLP/HTTP exporter, which reads the standard variables
itself (OTEL_EXPORTER_OTLP_ENDPOINT or _TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*). Inside Lambda the process is frozen
as soon as a handler returns, so each local root span flushes its trace before it ends.

Call sites stay one line: `with tracing.span("tool bash", {...}) as span:`; `headers()` gives the
W3C `traceparent` of the current span for a call to another process, and `continued(carrier)`
makes the one a caller sent current. Every span also carries the log ids bound at the time
(session, turn, user; the user hashed under LOG_HASH_USER_IDS=1), so a trace and its log lines
find each other.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from chalicelib.telemetry import log_context

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
#: The W3C trace-context header (and payload field) that carries a trace between processes.
TRACEPARENT = "traceparent"
#: Span attributes named after the log ids (chalicelib.telemetry.log_context).
ID_ATTRIBUTES = {"requestId": "faas.invocation_id", "sessionId": "session.id", "turnId": "turn.id", "userId": "user.id"}
#: How long a Lambda handler waits for its spans to be sent before returning.
FLUSH_TIMEOUT_MS = 5_000

AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue | None]


def wanted(env: Mapping[str, str]) -> bool:
    """Whether traces are exported: an OTLP endpoint is set and the SDK is not disabled."""
    return any(env.get(name) for name in ENDPOINT_VARIABLES) and env.get("OTEL_SDK_DISABLED", "").lower() != "true"


class Span:
    """What a call site may do with its span; the no-op one does nothing."""

    def set(self, attributes: Attributes) -> None:
        """Add attributes (None values are left out)."""

    def fail(self, code: str) -> None:
        """Mark the span failed with an error code (the `code` a client was sent)."""

    def end(self) -> None:
        """End a span from `started` (one from `span` ends with its block)."""


NO_SPAN = Span()


class _Recording(Span):
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, attributes: Attributes) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def fail(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("error.type", code)
        self._span.set_status(Status(StatusCode.ERROR, code))

    def end(self) -> None:
        self._span.end()


class _Tracing:
    """The configured SDK: a tracer, its provider and the trace-context propagator."""

    def __init__(self, provider: TracerProvider, flush_each_root: bool, hash_user_ids: bool) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("claude-agent-backend")
        self.propagator = TraceContextTextMapPropagator()
        self.flush_each_root = flush_each_root
        self.hash_user_ids = hash_user_ids


_lock = threading.Lock()
_state: _Tracing | None = None
_decided = False
_service_name = "claude-agent-backend"
_global_set = False


def name_service(name: str) -> None:
    """The `service.name` spans carry when OTEL_SERVICE_NAME does not say (the sandbox host sets its own)."""
    global _service_name
    _service_name = name


def configure(env: Mapping[str, str] | None = None, exporter: SpanExporter | None = None) -> bool:
    """(Re)configure from `env` (default os.environ); return whether spans are now recorded.

    `exporter` replaces the OTLP one (tests give the SDK's in-memory exporter) and turns tracing
    on whatever `env` says. The first provider configured also becomes OpenTelemetry's global
    one, so the Anthropic SDK's own spans of each API call join the trace.
    """
    global _state, _decided, _global_set
    env = os.environ if env is None else env
    with _lock:
        previous, _state, _decided = _state, None, True
        if previous is not None:
            previous.provider.shutdown()
        if exporter is None and not wanted(env):
            return False
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # OTEL_SERVICE_NAME (read by Resource.create) wins over the default name.
        resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": _service_name})
        provider = TracerProvider(resource=resource)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        if not _global_set:
            trace.set_tracer_provider(provider)
            _global_set = True
        _state = _Tracing(provider, flush_each_root="AWS_LAMBDA_FUNCTION_NAME" in env,
                          hash_user_ids=env.get("LOG_HASH_USER_IDS", "") in ("1", "true", "yes"))
        return True


def _current() -> _Tracing | None:
    if not _decided:
        configure()
    return _state


def enabled() -> bool:
    """Whether spans are recorded (configuring from the environment on first call)."""
    return _current() is not None


def flush(timeout_ms: int = FLUSH_TIMEOUT_MS) -> None:
    """Send every span ended so far (a no-op when tracing is off)."""
    tracing = _current()
    if tracing is not None:
        tracing.provider.force_flush(timeout_ms)


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None, *, kind: str = "internal") -> Iterator[Span]:
    """A span for the block, current inside it: a child of the current span, or of a trace
    `continued` from a caller. `kind` is internal, server, client, producer or consumer. An
    exception leaving the block is recorded on it and marks it failed."""
    tracing = _current()
    if tracing is None:
        yield NO_SPAN
        return
    from opentelemetry import trace

    parent = trace.get_current_span().get_span_context()
    local_root = not parent.is_valid or parent.is_remote
    try:
        with tracing.tracer.start_as_current_span(name, kind=getattr(trace.SpanKind, kind.upper()),
                                                  attributes=_attributes(tracing, attributes)) as recording:
            yield _Recording(recording)
    finally:
        if local_root and tracing.flush_each_root:
            tracing.provider.force_flush(FLUSH_TIMEOUT_MS)


def started(name: str, attributes: Attributes | None = None, *, kind: str = "internal") -> Span:
    """A span begun now, a child of the current one but not made current, for work whose start
    and end are seen by two callbacks (botocore's events); the caller ends it with `.end()`."""
    tracing = _current()
    if tracing is None:
        return NO_SPAN
    from opentelemetry import trace

    return _Recording(tracing.tracer.start_span(name, kind=getattr(trace.SpanKind, kind.upper()),
                                                attributes=_attributes(tracing, attributes)))


def _attributes(tracing: _Tracing, attributes: Attributes | None) -> dict[str, AttributeValue]:
    ids = log_context.current()
    if tracing.hash_user_ids and "userId" in ids:
        from chalicelib.telemetry.json_logs import hashed_user

        ids["userId"] = hashed_user(ids["userId"])
    found: dict[str, AttributeValue] = {ID_ATTRIBUTES[k]: v for k, v in ids.items() if k in ID_ATTRIBUTES}
    found.update({k: v for k, v in (attributes or {}).items() if v is not None})
    return found


def headers() -> dict[str, str]:
    """The current span's trace context as W3C headers (`traceparent`, `tracestate`); empty
    when tracing is off or no span is current."""
    tracing = _current()
    if tracing is None:
        return {}
    carrier: dict[str, str] = {}
    tracing.propagator.inject(carrier)
    return carrier


@contextlib.contextmanager
def continued(carrier: Mapping[str, Any] | None) -> Iterator[None]:
    """Make the trace context another process sent (its `traceparent`, in headers or a payload)
    current for the block, so spans started inside join that trace."""
    tracing = _current()
    fields = {k.lower(): v for k, v in (carrier or {}).items() if isinstance(k, str) and isinstance(v, str)}
    if tracing is None or not fields.get(TRACEPARENT):
        yield
        return
    from opentelemetry import context

    token = context.attach(tracing.propagator.extract(fields))
    try:
        yield
    finally:
        context.detach(token)
