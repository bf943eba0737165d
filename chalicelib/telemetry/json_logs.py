"""Log lines as JSON objects, one per line, carrying the ids of `log_context`.

Every line has `time`, `level`, `logger`, `message` and whichever of `requestId`, `sessionId`,
`turnId`, `userId` are known, plus `error` (the traceback) for an exception. With
LOG_HASH_USER_IDS=1 the user id is replaced by the first 16 hex digits of its SHA-256, so logs
can still be grouped per user without naming one. Used inside Lambda (where CloudWatch Logs
Insights reads the fields) and wherever LOG_FORMAT=json; otherwise logging is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone

from chalicelib.telemetry import log_context


def hashed_user(user_id: str) -> str:
    """What a user id becomes in the logs under LOG_HASH_USER_IDS=1."""
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, hash_user_ids: bool = False) -> None:
        super().__init__()
        self.hash_user_ids = hash_user_ids

    def format(self, record: logging.LogRecord) -> str:
        # As logging.Formatter does: other handlers (and tools reading records) expect it set.
        record.message = record.getMessage()
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.message,
        }
        ids = log_context.current()
        # Lambda's own handler puts the invocation's id on each record; a bound one is more precise.
        lambda_request = getattr(record, "aws_request_id", None)
        if lambda_request and "requestId" not in ids:
            ids["requestId"] = str(lambda_request)
        if self.hash_user_ids and "userId" in ids:
            ids["userId"] = hashed_user(ids["userId"])
        line.update(ids)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def wanted(env: Mapping[str, str]) -> bool:
    """JSON logs inside Lambda unless LOG_FORMAT=text, and elsewhere when LOG_FORMAT=json."""
    fmt = env.get("LOG_FORMAT", "").lower()
    return fmt == "json" or (fmt != "text" and "AWS_LAMBDA_FUNCTION_NAME" in env)


def configure(env: Mapping[str, str] | None = None, root: logging.Logger | None = None) -> bool:
    """Give the root logger's (or `root`'s) handlers the JSON formatter, adding one on stderr when
    it has none; return whether JSON logging is on."""
    env = os.environ if env is None else env
    if not wanted(env):
        return False
    formatter = JsonFormatter(hash_user_ids=env.get("LOG_HASH_USER_IDS", "") in ("1", "true", "yes"))
    root = root or logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    return True
