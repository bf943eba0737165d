"""`Api`: registers Chalice routes whose handlers get a parsed request and the services.

Every route goes through one `dispatch`, so auth, error mapping and JSON encoding are the same
everywhere, and a handler is a few lines: read what it needs, call a service, return a model.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalice import Chalice, Response
from pydantic import BaseModel

from chalicelib import secrets
from chalicelib.config import Settings
from chalicelib.container import Container, get_container
from chalicelib.errors import AppError, NotFound, PreconditionFailed, ServiceUnavailable
from chalicelib.storage import ObjectNotFound, StorageError, StorageUnavailable
from chalicelib.storage import PreconditionFailed as StoragePreconditionFailed
from chalicelib.web.auth import require_api_key
from chalicelib.web.cors import cors_headers, preflight_headers
from chalicelib.web.responses import Reply, error_response, json_response
from chalicelib.web.requests import ApiRequest

log = logging.getLogger(__name__)

# Every content type reaches our handler, which answers a JSON 415 itself; Chalice's own
# 415 has a different body shape than the rest of the API.
ANY_CONTENT_TYPE = ["*/*"]


@dataclass(frozen=True)
class RequestContext:
    """What a route handler receives besides its path parameters."""

    request: ApiRequest
    services: Container

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def websocket_base(self) -> str:
        """Where clients open the agent websocket: WEBSOCKET_URL when deployed (API Gateway's
        websocket API has its own host), else this server's own /ws (the local gateway)."""
        if self.settings.websocket_url:
            return self.settings.websocket_url.rstrip("/")
        headers = self.request.headers
        scheme = "wss" if headers.get("x-forwarded-proto", "http") == "https" else "ws"
        return f"{scheme}://{headers.get('host', '127.0.0.1:8000')}/ws"


Handler = Callable[..., BaseModel | Reply | dict[str, Any]]


class Api:
    """Route registration on a Chalice app, with the edge behaviour applied to every handler."""

    def __init__(self, app: Chalice) -> None:
        self.app = app
        self._methods: dict[str, list[str]] = {}

    def route(self, path: str, *, methods: list[str], public: bool = False) -> Callable[[Handler], Handler]:
        """Register `handler(ctx, **path_params)` for `methods` on `path`."""

        def decorator(handler: Handler) -> Handler:
            @functools.wraps(handler)
            def view(**params: str) -> Response:
                return self.dispatch(handler, params, public=public)

            self.app.route(path, methods=methods, content_types=ANY_CONTENT_TYPE)(view)
            if path not in self._methods:
                self._register_preflight(path, handler.__name__)
            self._methods.setdefault(path, []).extend(methods)
            return handler

        return decorator

    def _register_preflight(self, path: str, name: str) -> None:
        def preflight(**_: str) -> Response:
            try:
                settings = Settings.from_env()
            except AppError as error:
                return error_response(error)
            headers = preflight_headers(settings, self.app.current_request.headers, self._methods[path])
            return Response(body="", status_code=204, headers=headers)

        preflight.__name__ = f"{name}_preflight"
        self.app.route(path, methods=["OPTIONS"], content_types=ANY_CONTENT_TYPE)(preflight)

    def dispatch(self, handler: Handler, params: dict[str, str], *, public: bool) -> Response:
        """Run one request through auth, the handler and error mapping, adding CORS headers."""
        response = self._dispatch(handler, params, public=public)
        try:
            response.headers.update(cors_headers(Settings.from_env(), self.app.current_request.headers))
        except AppError:
            pass
        return response

    def _dispatch(self, handler: Handler, params: dict[str, str], *, public: bool) -> Response:
        try:
            secrets.ensure_loaded()
            settings = Settings.from_env()
            request = ApiRequest(self.app.current_request)
            if not public:
                require_api_key(settings, request.headers)
            result = handler(RequestContext(request, get_container(settings)), **params)
            if isinstance(result, Reply):
                return json_response(result.body, result.status, result.headers)
            if isinstance(result, Response):
                return result  # a file download (chalicelib.web.downloads), already shaped for Chalice
            return json_response(result)
        except AppError as error:
            return error_response(error)
        except Exception as exc:  # noqa: BLE001 - the edge must answer JSON, whatever happened
            return error_response(map_exception(exc))


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
