"""Benchmark: what a network-on sandbox and a hostile workspace cost (issue 24).

Prints, for local bubblewrap sandboxes on this machine (run as root: the network namespace
needs it):
- creating and destroying a sandbox with the network off and on (the namespace, its loopback
  and the proxy's two listeners);
- one command through a fresh exec, network off and on (the pre-exec step joins the namespace);
- HTTP requests from inside the sandbox through the egress proxy to an upstream on loopback
  (reachable only through the test exemption of the address guard; no packet leaves the host),
  a new connection each, as `curl` makes them, against the same requests made on the host;
- saving and restoring a 1,500-deep tree and two 120 MB sparse files.

    .venv/bin/python -m scripts.bench_egress [--rounds 20]
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import os
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from scripts.benchlib.timing import show, timed

ROOT = Path(__file__).resolve().parents[1]


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    rounds = max(1, min(parser.parse_args().rounds, 1000))
    sys.path.insert(0, str(ROOT))
    from chalicelib.config import Settings
    from chalicelib.sandbox.base import SandboxOptions
    from chalicelib.sandbox.bwrap import LocalSandboxProvider
    from chalicelib.sandbox.egress_policy import AddressGuard

    if os.geteuid() != 0:
        raise SystemExit("run as root: a network namespace per sandbox needs it")
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{upstream.server_address[1]}/"
    with tempfile.TemporaryDirectory() as tmp:
        provider = LocalSandboxProvider(
            Settings.from_env({"SANDBOX_ROOT": f"{tmp}/sb", "SANDBOX_DISK_MB": "256"}),
            egress_guard=AddressGuard(exempt=(ipaddress.ip_network("127.0.0.1/32"),)))
        try:
            for label, options in (("off", SandboxOptions()), ("on", SandboxOptions(allow_network=True))):
                show(f"create + destroy, network {label}",
                     timed(lambda o=options: (provider.create("bench", o), provider.destroy("bench")), rounds))
            for label, options in (("off", SandboxOptions()), ("on", SandboxOptions(allow_network=True))):
                sandbox = provider.create(f"exec-{label}", options)
                show(f"exec `true`, network {label}", timed(lambda s=sandbox: s.exec("true"), rounds))
            sandbox = provider.create("exec-on", SandboxOptions(allow_network=True))
            count = 50
            script = ("import time, urllib.request as u\n"
                      f"o = u.build_opener(u.ProxyHandler({{'http': 'http://127.0.0.1:3128'}}))\n"
                      f"t = time.perf_counter()\nfor _ in range({count}): o.open('{url}').read()\n"
                      "print((time.perf_counter() - t) * 1000)")
            inside = [float(sandbox.exec(f"env -u NO_PROXY -u no_proxy python3 -c \"{script}\"", timeout=60).stdout.strip() or "nan") / count
                      for _ in range(max(1, rounds // 4))]
            show(f"HTTP GET through the proxy from inside ({count} per run)", inside)
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            show("HTTP GET on the host, no proxy", timed(lambda: direct.open(url).read(), rounds * 5))
            hostile = provider.create("hostile", SandboxOptions())
            hostile.exec("python3 -c \"import os\nfor i in range(1500):\n  os.mkdir('d'); os.chdir('d')\"; "
                         "truncate -s 120M a.bin b.bin", timeout=120)
            archive: list[bytes] = []
            show("save a 1,500-deep tree + two 120 MB sparse files",
                 timed(lambda: archive.append(hostile.export_workspace(256 * 2**20) or b""), max(1, rounds // 10)))
            print(f"{'  its archive':<58} {len(archive[-1]) / 1024:8.1f} KiB")
            restored = provider.create("restored", SandboxOptions())
            show("restore it (holes stay holes)",
                 timed(lambda: restored.import_workspace(archive[-1], 256 * 2**20), max(1, rounds // 10)))
            print(f"{'  disk in use after the restore':<58} {restored.exec('du -sk /workspace').stdout.split()[0]:>8} KiB")
        finally:
            for sid in provider.sessions():
                provider.destroy(sid)
            upstream.shutdown()


if __name__ == "__main__":
    main()
