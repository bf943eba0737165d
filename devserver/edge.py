"""What the local gateway refuses before the app sees a request, with API Gateway's limits.

Each refusal is a JSON `{"error", "code"}` body, like every other error of the API. The AWS
API routes (management, Invoke) also carry `message` and `x-amzn-ErrorType`, which is what
botocore reads from AWS's own error answers.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse

from chalicelib.aws import LOCAL_GATEWAY_SECRET_HEADER

# The limits AWS applies in front of the same code, so a body too big for AWS is too big here.
REST_MAX_BYTES = 10 * 1024 * 1024  # API Gateway REST API payload
MANAGEMENT_MAX_BYTES = 128 * 1024  # API Gateway WebSocket message (post_to_connection data)
INVOKE_MAX_BYTES = 256 * 1024  # Lambda asynchronous invocation payload (the turn runner's)


class Refused(Exception):
    """A request the gateway answers itself, with `response`."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def error(status: int, message: str, code: str, *, aws_type: str | None = None) -> JSONResponse:
    """The API's error body; `aws_type` adds what botocore expects from an AWS API."""
    if aws_type is None:
        return JSONResponse({"error": message, "code": code}, status_code=status)
    return JSONResponse({"error": message, "code": code, "message": message}, status_code=status,
                        headers={"x-amzn-ErrorType": aws_type})


async def read_capped(request: Request, limit: int, *, aws_type: str | None = None) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is read as it streams and dropped the moment it passes the limit, so a huge upload never
    sits in memory.
    """
    too_large = Refused(error(413, f"The request body is larger than {limit} bytes, the most this route accepts: "
                              "send less (split it, or store large data elsewhere).", "body_too_large", aws_type=aws_type))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def check_path(raw_path: str) -> None:
    """Refuse a path Chalice's local router would misread.

    It splits the path with `urlparse`, which drops everything after a `;` in the last
    segment: `DELETE /users/a;b` would run as `DELETE /users/a`. API Gateway keeps `a;b` as the
    parameter (an invalid id), so refusing it here gives the same outcome: nothing runs.
    """
    if ";" in raw_path:
        raise Refused(error(400, "The path contains ';', which no route or id accepts: remove it.",
                            "invalid_path"))


def check_gateway_secret(request: Request, secret: str) -> None:
    """Refuse a call to the management or Invoke API that is not the app's own.

    The app's AWS clients add this process's secret to each call (chalicelib/aws.py); anyone
    else reaching the port (a web page, another local process, a sandbox with network) cannot.
    """
    offered = request.headers.get(LOCAL_GATEWAY_SECRET_HEADER, "")
    if not hmac.compare_digest(offered.encode(), secret.encode()):
        raise Refused(error(403, "This route takes only the app's own calls (the AWS management and Lambda Invoke "
                            "APIs the local gateway stands in for): call the REST API or the websocket instead.",
                            "not_the_app", aws_type="ForbiddenException"))
