"""Give back a server's sandboxes when it ends without destroying them.

A server that stops cleanly destroys its sandboxes (the provider's exit handler). One that is
killed (SIGTERM's default action, kill -9, an OOM kill) leaves their tmpfs workspaces mounted,
their cgroups and their uid records behind, until the next start's sweep. So the first
provider in a process starts one watcher process and tells it, over a pipe, each sandbox root
it uses. The watcher reads until end of file, which comes when the server is gone however it
ended (the kernel closes a dead process's pipes), then sweeps those roots: what no live
process holds is unmounted and removed. The watcher runs in its own session, so the signal
that stops the server's process group does not stop it first.

    python -m chalicelib.sandbox.leftovers     # started by watch_root(); reads JSON lines on stdin
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import chalicelib

_lock = threading.Lock()
_watcher: subprocess.Popen[str] | None = None
_told: set[tuple[str, str]] = set()


def watch_root(root: Path, uid_folder: Path) -> None:
    """Have the watcher sweep `root` (its uid records in `uid_folder`) once this process ends."""
    global _watcher
    entry = (str(root), str(uid_folder))
    with _lock:
        if entry in _told and _watcher is not None and _watcher.poll() is None:
            return
        if _watcher is None or _watcher.poll() is not None:
            _told.clear()
            # -B: no bytecode written beside the code (`chalice local` restarts on new files there).
            _watcher = subprocess.Popen([sys.executable, "-B", "-m", "chalicelib.sandbox.leftovers"],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        cwd=Path(chalicelib.__file__).resolve().parents[1], text=True,
                                        start_new_session=True)
        stdin: IO[str] | None = _watcher.stdin
        assert stdin is not None
        stdin.write(json.dumps({"root": entry[0], "uids": entry[1]}) + "\n")
        stdin.flush()
        _told.add(entry)


def _sweep_after_eof(lines: IO[str]) -> None:
    roots: dict[str, str] = {}
    for line in lines:
        told = json.loads(line)
        roots[told["root"]] = told["uids"]
    # Imported only now: the watcher waits for months without the sandbox code loaded.
    from chalicelib.sandbox.bwrap import sweep_leftovers
    from chalicelib.sandbox.cgroups import Cgroups
    from chalicelib.sandbox.uids import UidAllocator

    cgroups = Cgroups()
    for root, uid_folder in roots.items():
        if Path(root).is_dir():
            sweep_leftovers(Path(root), UidAllocator(Path(uid_folder)), cgroups if cgroups.version else None)


if __name__ == "__main__":
    _sweep_after_eof(sys.stdin)
