"""One `current_request` per request for a Chalice app served by many threads at once.

Chalice stores the request being handled on the app object (`app.current_request`, and
`app.lambda_context`), which is right on Lambda (one request per container at a time) and
wrong under the local gateway, which runs requests concurrently: a route could read another
request's user or headers. Here both attributes are backed by context variables, so each
request (each `run_in_threadpool` call runs in its own copy of the context) sees only what was
set while handling it. A context variable rather than a thread-local, because it is correct
wherever the handler runs (a worker thread or the event loop), and a value can never leak from
one request into the next one run on a reused worker thread.
"""

from __future__ import annotations

import contextvars
from typing import Any

from chalice import Chalice

_current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("chalice_current_request", default=None)
_lambda_context: contextvars.ContextVar[Any] = contextvars.ContextVar("chalice_lambda_context", default=None)


class _RequestScoped:
    """Mixed in before the app's own class: the two per-invocation attributes become per context."""

    @property
    def current_request(self) -> Any:
        return _current_request.get()

    @current_request.setter
    def current_request(self, value: Any) -> None:
        _current_request.set(value)

    @property
    def lambda_context(self) -> Any:
        return _lambda_context.get()

    @lambda_context.setter
    def lambda_context(self, value: Any) -> None:
        _lambda_context.set(value)


def make_request_scoped(app: Chalice) -> Chalice:
    """Give `app` per-request `current_request` / `lambda_context` (in place; idempotent).

    Only the local gateway calls this: the class of the one app object is swapped for a
    subclass, as `chalice local` itself does, so Lambda's code path is untouched.
    """
    if isinstance(app, _RequestScoped):
        return app
    # Chalice's __init__ assigned both attributes on the instance; the properties must win.
    for name in ("current_request", "lambda_context"):
        app.__dict__.pop(name, None)
    app.__class__ = type(f"RequestScoped{type(app).__name__}", (_RequestScoped, type(app)), {})
    return app
