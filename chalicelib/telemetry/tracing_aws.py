"""A span for each call a botocore client makes (the S3 adapter's storage operations).

Hooked on the client's own events, so every call is covered however the adapter makes it:
`before-parameter-build` starts the span (it sees the call's Bucket and Key), `after-call` ends
it with the HTTP status (and the S3 error code of an error answer), `after-call-error` ends it
failed when no answer came (timeout, connection refused). Botocore's retries happen inside one
call, so a span covers every attempt of its operation. Installed only when tracing is on.
"""

from __future__ import annotations

from typing import Any

from chalicelib.telemetry import tracing

_SPAN = "claude_agent.span"  # where the call's span waits in botocore's per-call context dict


def instrument(client: Any) -> Any:
    """Give `client` a span per call when tracing is on; return it (unchanged when off)."""
    if not tracing.enabled():
        return client
    service = client.meta.service_model.service_id.hyphenize()
    events = client.meta.events
    events.register(f"before-parameter-build.{service}", _start, unique_id=f"tracing-start-{service}")
    events.register(f"after-call.{service}", _answered, unique_id=f"tracing-answered-{service}")
    events.register(f"after-call-error.{service}", _failed, unique_id=f"tracing-failed-{service}")
    return client


def _start(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
    service = model.service_model.service_id.hyphenize()
    context[_SPAN] = tracing.started(f"{service} {model.name}", {
        "rpc.system": "aws-api", "rpc.service": service, "rpc.method": model.name,
        "aws.s3.bucket": params.get("Bucket"), "aws.s3.key": params.get("Key"), "aws.s3.prefix": params.get("Prefix"),
    }, kind="client")


def _answered(http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    span = context.pop(_SPAN, None)
    if span is None:
        return
    status = int(getattr(http_response, "status_code", 0) or 0)
    code = (parsed.get("Error") or {}).get("Code")
    span.set({"http.response.status_code": status, "aws.error_code": code})
    if status >= 500:
        span.fail(str(code or status))
    span.end()


def _failed(exception: BaseException, context: dict[str, Any], **_: Any) -> None:
    span = context.pop(_SPAN, None)
    if span is None:
        return
    span.fail(type(exception).__name__)
    span.end()
