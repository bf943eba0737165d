"""A Lambda container's init phase: what it does once, so that its first request does not.

Only inside Lambda (AWS_LAMBDA_FUNCTION_NAME is set); `chalice local`, ./scripts/dev and the
tests import the app as any module. app.py calls `begin()` before its imports and `finish()`
after its last handler.

- The cyclic garbage collector is paused while the app's modules load. An import allocates
  hundreds of thousands of objects that live as long as the process (modules, classes,
  botocore's parsed models, pydantic's validators) and makes almost no garbage, yet every
  allocation burst had the collector traverse them again: 12 ms of each cold start's CPU in
  the final package, 20 ms before its botocore data was slimmed (`python -m scripts.bench_cold_start`). `finish()` moves them to the permanent generation
  (`gc.freeze`), so later collections skip them too, and then collecting resumes.
- The storage client is built, as AWS advises for SDK clients: outside the handler, once per
  container. Creating it (botocore parsing S3's model and endpoint rules) was two thirds of a
  cold container's first request. A failure here (a missing setting or secret, SSM unreachable)
  is logged, not raised: a failed init only gets the caller a bare 502, while the first request
  builds the client again and answers with the precise JSON error.
"""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger(__name__)

_collector_paused = False


def in_lambda() -> bool:
    """Whether this process is a Lambda execution environment."""
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ


def begin() -> None:
    """Pause the cyclic garbage collector until `finish()` (inside Lambda only)."""
    global _collector_paused
    if in_lambda() and gc.isenabled():
        gc.disable()
        _collector_paused = True


def finish() -> None:
    """Build the storage client (inside Lambda), then freeze what init made and resume collecting."""
    global _collector_paused
    try:
        if in_lambda():
            _build_storage_client()
    finally:
        if _collector_paused:
            gc.freeze()
            gc.enable()
            _collector_paused = False


def _build_storage_client() -> None:
    from chalicelib import secrets
    from chalicelib.config import current_settings
    from chalicelib.container import get_container

    try:
        secrets.ensure_loaded()
        get_container(current_settings()).store  # noqa: B018 - built and kept by the container
    except Exception as exc:  # noqa: BLE001 - the first request reports it precisely
        log.warning("the storage client was not built at init (the first request will say why): %s", exc)
