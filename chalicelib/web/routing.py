"""`Api`: registers Chalice routes whose handlers get a parsed request and the services.

Every route goes through one `dispatch`, so auth, error mapping and JSON encoding are the same
everywhere, and a handler is a few lines: read what it needs, call a service, return a model.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalice import Chalice, Response
from chalice.app import Request
from pydantic import BaseModel

from chalicelib import secrets
from chalicelib.config import Settings, current_settings
from chalicelib.container import Container, get_container
from chalicelib.errors import (
    AppError,
    MethodNotAllowed,
    Misconfigured,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
)
from chalicelib.identity.principal import OPERATOR, EndUser, Principal
from chalicelib.storage import ObjectNotFound, StorageError, StorageUnavailable
from chalicelib.storage import PreconditionFailed as StoragePreconditionFailed
from chalicelib.telemetry import log_context, tracing
from chalicelib.web.access import Access, authorize
from chalicelib.web.auth import authenticate
from chalicelib.web.cors import cors_headers, preflight_headers
from chalicelib.web.requests import ApiRequest
from chalicelib.web.responses import Reply, error_response, json_response

log = logging.getLogger(__name__)

# Every content type reaches our handler, which answers a JSON 415 itself; Chalice's own
# 415 has a different body shape than the rest of the API.
ANY_CONTENT_TYPE = ["*/*"]
# Every method API Gateway and Chalice route but OPTIONS (each path has its own preflight).
ROUTABLE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
NOT_ALLOWED_SUFFIX = "_method_not_allowed"


@dataclass(frozen=True)
class RequestContext:
    """What a route handler receives besides its path parameters."""

    request: ApiRequest
    services: Container
    principal: Principal = OPERATOR

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def check_storage_quota(self, user_id: str) -> None:
        """413 `storage_quota_exceeded` when this request's body would take `user_id` past
        USER_STORAGE_MB (nothing is read when no limit is in effect)."""
        self.services.quotas.check_storage(user_id, self.request.body_size, self.services.usage.storage_bytes)

    def user_id_or_caller(self, user_id: str | None) -> str | None:
        """`user_id` (from the query), or else the user of a user token (the edge has checked
        that the two agree)."""
        if user_id is None and isinstance(self.principal, EndUser):
            return self.principal.user_id
        return user_id

    def websocket_base(self) -> str | None:
        """Where clients open the agent websocket: WEBSOCKET_URL when deployed (API Gateway's
        websocket API has its own host), else this server's own /ws (the local gateway); None
        under `chalice local`, which cannot serve websockets (aws/chalice#1674)."""
        if self.settings.websocket_url:
            return self.settings.websocket_url.rstrip("/")
        if self.settings.chalice_local:
            return None
        if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
            # In AWS the websocket API has its own host: deriving it from this request would hand
            # the client the REST API's host. A stack packaged without the merge template lacks it.
            raise Misconfigured(
                "WEBSOCKET_URL is not set on this deployment, so clients cannot be told where to connect. "
                "Package with ./scripts/package (its merge template sets WEBSOCKET_URL and TURN_RUNNER_FUNCTION), "
                "or after `chalice deploy` set WEBSOCKET_URL in .chalice/config.json and deploy again (README: Deploy).",
                code="websocket_url_not_configured",
            )
        headers = self.request.headers
        scheme = "wss" if headers.get("x-forwarded-proto", "http") == "https" else "ws"
        return f"{scheme}://{headers.get('host', '127.0.0.1:8000')}/ws"


Handler = Callable[..., BaseModel | Reply | dict[str, Any]]


class Api:
    """Route registration on a Chalice app, with the edge behaviour applied to every handler."""

    def __init__(self, app: Chalice) -> None:
        self.app = app
        self._methods: dict[str, list[str]] = {}

    def route(self, path: str, *, methods: list[str], public: bool = False,
              access: Access = Access.OWNER) -> Callable[[Handler], Handler]:
        """Register `handler(ctx, **path_params)` for `methods` on `path`, callable by `access`."""
        if public:
            access = Access.PUBLIC

        def decorator(handler: Handler) -> Handler:
            @functools.wraps(handler)
            def view(**params: str) -> Response:
                return self.dispatch(handler, params, access=access)

            self._drop_not_allowed(path)
            self.app.route(path, methods=methods, content_types=ANY_CONTENT_TYPE)(view)
            if path not in self._methods:
                self._register_preflight(path, handler.__name__)
            self._methods.setdefault(path, []).extend(methods)
            self._register_not_allowed(path, handler.__name__)
            return handler

        return decorator

    def _drop_not_allowed(self, path: str) -> None:
        """Take back the 405 placeholders of `path` so a real route can claim a method."""
        entries = self.app.routes.get(path, {})
        for method in [m for m, entry in entries.items() if entry.view_name.endswith(NOT_ALLOWED_SUFFIX)]:
            del entries[method]

    def _register_not_allowed(self, path: str, name: str) -> None:
        """Answer every other method on `path` with our JSON 405 and an Allow header.

        Without a route for the method, Chalice answers `{"Code": "MethodNotAllowedError"}` and
        API Gateway `{"message": "Missing Authentication Token"}`, neither in the API's error
        shape; registering the methods makes both gateways hand them to us.
        """
        self._drop_not_allowed(path)
        allowed = sorted({*self._methods[path], "OPTIONS"})
        missing = [m for m in ROUTABLE_METHODS if m not in allowed]

        def not_allowed(**_: str) -> Response:
            request = self.app.current_request
            method = request.method if request is not None else "This method"
            error = MethodNotAllowed(
                f"{method} is not supported on {path}: use {', '.join(allowed)} (see the API reference in README.md).",
                headers={"Allow": ", ".join(allowed)},
            )
            return self.dispatch(_raise(error), {}, access=Access.PUBLIC)

        not_allowed.__name__ = f"{name}{NOT_ALLOWED_SUFFIX}"
        if missing:
            self.app.route(path, methods=missing, content_types=ANY_CONTENT_TYPE)(not_allowed)

    def _register_preflight(self, path: str, name: str) -> None:
        def preflight(**_: str) -> Response:
            try:
                settings = current_settings()
            except AppError as error:
                return error_response(error)
            headers = preflight_headers(settings, self._request().headers, self._methods[path])
            return Response(body="", status_code=204, headers={**headers})

        preflight.__name__ = f"{name}_preflight"
        self.app.route(path, methods=["OPTIONS"], content_types=ANY_CONTENT_TYPE)(preflight)

    def _request(self) -> Request:
        """The request being handled (Chalice sets it before calling a view)."""
        request = self.app.current_request
        if request is None:
            raise RuntimeError("No current request: Api views run only inside a Chalice request.")
        return request

    def dispatch(self, handler: Handler, params: dict[str, str], *, access: Access) -> Response:
        """Run one request through auth, the handler and error mapping, adding CORS headers; log
        one line for it, with the ids it names."""
        request = self._request()
        started = time.monotonic()
        user = params.get("userId") or (request.query_params.get("userId") if request.query_params else None)
        route = (request.context or {}).get("resourcePath", "?")
        with log_context.bound(requestId=(request.context or {}).get("requestId"), userId=user,
                               sessionId=params.get("sessionId")), tracing.continued(request.headers), \
                tracing.span(f"{request.method} {route}", {"http.request.method": request.method, "http.route": route},
                             kind="server") as span:
            response = self._dispatch(handler, params, access=access)
            span.set({"http.response.status_code": response.status_code})
            if response.status_code >= 500:
                span.fail(str(response.status_code))
            try:
                response.headers.update(cors_headers(current_settings(), request.headers))
            except AppError:
                pass
            log.info("%s %s -> %d in %.0f ms", request.method, route, response.status_code, (time.monotonic() - started) * 1000)
        return response

    def _dispatch(self, handler: Handler, params: dict[str, str], *, access: Access) -> Response:
        try:
            secrets.ensure_loaded()
            settings = current_settings()
            request = ApiRequest(self._request())
            services = get_container(settings)
            principal: Principal = OPERATOR
            if access is not Access.PUBLIC:
                principal = authenticate(settings, request.headers, lambda: services.user_tokens)
                authorize(principal, access, params, owner_of=lambda sid: services.sessions.owner_of(sid),
                          query_user=request.query("userId"))
            result = handler(RequestContext(request, services, principal), **params)
            if isinstance(result, Reply):
                return json_response(result.body, result.status, result.headers)
            if isinstance(result, Response):
                return result  # a file download (chalicelib.web.downloads), already shaped for Chalice
            return json_response(result)
        except AppError as error:
            return error_response(error)
        except Exception as exc:  # noqa: BLE001 - the edge must answer JSON, whatever happened
            return error_response(map_exception(exc))


def _raise(error: AppError) -> Handler:
    def handler(ctx: RequestContext) -> dict[str, Any]:
        raise error

    return handler


def map_exception(exc: Exception) -> AppError:
    """The AppError a lower-layer exception stands for (logging the unexpected ones)."""
    if isinstance(exc, StorageUnavailable):
        detail = f" {exc.hint}" if exc.hint else ""
        log.error("storage unavailable: %s%s", exc, detail)
        return ServiceUnavailable(
            f"Storage is unavailable: {exc}{detail} Nothing was changed; retry shortly.",
            code="storage_unavailable",
        )
    if isinstance(exc, ObjectNotFound):
        return NotFound("Not found.")
    if isinstance(exc, StoragePreconditionFailed):
        return PreconditionFailed(
            "The object changed since you read it (If-Match did not match) or already exists "
            "(If-None-Match: *). Fetch it again and retry with the new ETag."
        )
    incident = uuid.uuid4().hex[:12]
    if isinstance(exc, StorageError):
        log.error("storage error [%s]: %s", incident, exc)
        return ServiceUnavailable(f"Storage failed ({exc}); incident {incident}. Retry shortly.", code="storage_error")
    log.exception("unhandled error [%s]", incident)
    return AppError(f"Internal error (incident {incident}); the server log has the details.")
