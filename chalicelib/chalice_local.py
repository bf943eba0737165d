"""`chalice local`: what the app does differently under Chalice's own development server.

`chalice local` serves the REST API only (it cannot upgrade websockets, aws/chalice#1674; the
local gateway, ./scripts/dev, serves both). Under it, with its defaults:
- its autoreloader restarts the server whenever a file under the project changes or appears.
  The store's default moves out of the project (chalicelib.config.under_chalice_local), and the
  app writes no bytecode there, so nothing the app does restarts it;
- the reloader's parent does not pass a SIGTERM on to its worker, which would serve on, its
  sandboxes mounted. The worker asks the kernel for a SIGTERM when its parent dies; the
  sandboxes a killed worker leaves are given back by chalicelib.sandbox.leftovers.
The app is imported in the worker's server thread, where no signal handler can be set.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

from chalicelib.config import under_chalice_local

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def prepare(environ: Mapping[str, str] = os.environ) -> None:
    """Under `chalice local` only (a no-op in Lambda, the local gateway and tests): no bytecode
    written into the watched tree, and the reloader's worker ends with its parent."""
    if not under_chalice_local(environ.get):
        return
    sys.dont_write_bytecode = True
    if environ.get("CHALICE_WORKER") and sys.platform == "linux":
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)
