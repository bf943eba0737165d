"""A network namespace per network-on sandbox, whose only way out is the egress proxy.

The namespace holds nothing but its loopback interface: no route, no other interface, so a
packet a sandboxed process sends anywhere else fails with "Network is unreachable". Abstract
unix sockets are scoped to a network namespace too, so the host's are out of reach.

The proxy's two listeners (HTTP on 127.0.0.1:3128, SOCKS5 on 127.0.0.1:1080) are opened *inside*
the namespace by a short-lived thread of this process, which then returns to the host's
namespace. A socket keeps the namespace it was made in, so the proxy accepts the sandbox's
connections on them and dials out from the host: no relay process inside the sandbox (Anthropic's
sandbox runtime runs socat there, towards a bind-mounted unix socket), and each listener tells
the proxy which sandbox a connection comes from.

Each sandboxed command joins the namespace (setns) in its pre-exec step, as root and before
dropping to the session's uid, so every command of a sandbox shares one loopback: a server the
agent starts in one command answers the next. The namespace belongs to the host's user
namespace, so nothing inside can add an interface, a route or an address to it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
from dataclasses import dataclass

from chalicelib.sandbox import linux

HTTP_PROXY_PORT = 3128
SOCKS_PROXY_PORT = 1080
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


@dataclass
class SandboxNetwork:
    """A sandbox's namespace (`ns_fd`, for setns) and the proxy's listeners in it."""

    ns_fd: int
    http_listener: socket.socket
    socks_listener: socket.socket

    def close(self) -> None:
        """Close the listeners and the namespace fd; the kernel frees the namespace with its last user."""
        self.http_listener.close()
        self.socks_listener.close()
        if self.ns_fd >= 0:
            os.close(self.ns_fd)
            self.ns_fd = -1


def create_network() -> SandboxNetwork:
    """A fresh namespace with loopback up and the proxy's listeners bound in it (needs root)."""
    made: list[SandboxNetwork] = []
    failed: list[BaseException] = []

    def inside() -> None:
        # Only this thread changes namespace, and it ends here whatever happens; it returns to
        # the host's namespace first so nothing this process opens later lands in the sandbox's.
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        ns_fd = -1
        try:
            linux.unshare_network()
            ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _loopback_up()
            http = _listen(HTTP_PROXY_PORT)
            try:
                socks = _listen(SOCKS_PROXY_PORT)
            except BaseException:
                http.close()
                raise
            made.append(SandboxNetwork(ns_fd, http, socks))
        except BaseException as exc:
            if ns_fd >= 0:
                os.close(ns_fd)
            failed.append(exc)
        finally:
            try:
                linux.enter_network(home)
            finally:
                os.close(home)

    worker = threading.Thread(target=inside, name="sandbox-netns", daemon=True)
    worker.start()
    worker.join(timeout=30)
    if failed:
        raise failed[0]
    if not made:
        raise OSError("creating the sandbox's network namespace did not finish within 30 s")
    return made[0]


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _listen(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    return listener
