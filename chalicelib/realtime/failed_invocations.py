"""The turn runner's invocations that failed for good, as Lambda reports them.

The runner is invoked asynchronously; Lambda retries a failed invocation twice, then sends a
record of it to the function's on-failure destination (an SQS queue in the stack). The
`turn_failures` consumer reads each record and has the session's turn repaired and its client
told (`TurnRunner.give_up`): without it, the turn would wait for the next connect or message.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chalicelib.errors import AppError
from chalicelib.ids import validate_id


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _RequestContext(_Lenient):
    condition: str = "RetriesExhausted"  # or EventAgeExceeded
    approximate_invoke_count: int = Field(default=0, alias="approximateInvokeCount")


class _ResponseContext(_Lenient):
    function_error: str | None = Field(default=None, alias="functionError")


class _TurnPayload(_Lenient):
    session_id: str = Field(alias="sessionId")

    @field_validator("session_id")
    @classmethod
    def _an_id(cls, value: str) -> str:
        try:
            return validate_id(value, "sessionId")
        except AppError as exc:
            raise ValueError(exc.message) from None


class FailedInvocation(_Lenient):
    """One on-failure destination record (the parts the repair needs)."""

    request_context: _RequestContext = Field(alias="requestContext")
    request_payload: _TurnPayload = Field(alias="requestPayload")
    response_context: _ResponseContext | None = Field(default=None, alias="responseContext")
    response_payload: Any = Field(default=None, alias="responsePayload")

    @property
    def session_id(self) -> str:
        return self.request_payload.session_id

    def why(self) -> str:
        """What Lambda says went wrong, short enough for the client's error frame."""
        attempts = self.request_context.approximate_invoke_count
        if self.request_context.condition == "EventAgeExceeded":
            return "it waited too long to start"
        error = self.response_context.function_error if self.response_context else None
        detail = ""
        if isinstance(self.response_payload, dict):
            detail = str(self.response_payload.get("errorType") or self.response_payload.get("errorMessage") or "")
        told = f"{attempts} attempts" if attempts else "every retry"
        return f"{told}, {error or 'an error'}" + (f": {detail[:120]}" if detail else "")
