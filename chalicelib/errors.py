"""The error family every layer raises; the web edge maps each to `{"error", "code"}`.

Each error carries the HTTP status it maps to and a machine code, so services can say
precisely what went wrong without knowing anything about HTTP or Chalice.
"""

from __future__ import annotations


class AppError(Exception):
    """Base class: a message for humans (what was wrong, what to do) and a machine code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class MethodNotAllowed(AppError):
    """The path exists but not with this method; `Allow` (in headers) lists the ones it has."""

    status = 405
    code = "method_not_allowed"


class Conflict(AppError):
    status = 409
    code = "conflict"


class PreconditionFailed(AppError):
    status = 412
    code = "precondition_failed"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(AppError):
    status = 422
    code = "validation_error"


class ServiceUnavailable(AppError):
    """A dependency (storage, sandbox host, model) is down; the client should retry later."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Misconfigured(AppError):
    """The deployment is missing a setting; only the operator can fix it."""

    status = 500
    code = "misconfigured"


class NotAcceptable(AppError):
    """The answer cannot be sent in a form the client's Accept header allows."""

    status = 406
    code = "not_acceptable"


class QuotaExceeded(AppError):
    """A per-user limit is reached; `Retry-After` says when to try again."""

    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)
