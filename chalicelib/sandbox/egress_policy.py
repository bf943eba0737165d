"""Who a network-on sandbox may reach: host-name rules, then the address actually dialled.

Two checks, in this order, both by the egress proxy on the host (`egress_proxy.py`):
1. the name the agent asked for, against the operator's SANDBOX_EGRESS_DENY / SANDBOX_EGRESS_ALLOW
   and the user's `network: {"allow", "deny"}` (a deny always wins; an allow list, where one is
   set, must match);
2. every address the proxy resolved that name to, against the networks a sandbox must never
   reach: loopback, link-local (cloud metadata at 169.254.169.254 and 169.254.170.2), RFC 1918,
   CGNAT, ULA, multicast, anything else not globally routable, and this host's own addresses.

The second check runs on the address the proxy then connects to, never on a name resolved
again later, so a name that answers differently the second time (DNS rebinding) gets nothing.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A rule: a host name (`pypi.org`), a wildcard over its subdomains (`*.githubusercontent.com`,
#: which does not match the bare domain), or an IP address literal.
_NAME = re.compile(r"^(\*\.)?(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
MAX_RULES = 200

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("169.254.170.2"),
             ipaddress.ip_address("fd00:ec2::254")}
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ipaddress.ip_network("fc00::/7")


def normalize_rule(rule: str) -> str:
    """A rule in its canonical form (lower case, no trailing dot); ValueError when malformed."""
    value = rule.strip().lower().rstrip(".")
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _NAME.match(value):
        raise ValueError(f"{rule!r} is not a host name, a '*.domain' wildcard or an IP address")
    return value


def matches(host: str, rules: Iterable[str]) -> str | None:
    """The first rule that matches `host` (already lower case), or None."""
    for rule in rules:
        if rule.startswith("*."):
            if host.endswith(rule[1:]):
                return rule
        elif host == rule:
            return rule
    return None


@dataclass(frozen=True)
class EgressRules:
    """The name rules of one sandbox: the operator's and its user's, both normalised."""

    user_allow: tuple[str, ...] = ()
    user_deny: tuple[str, ...] = ()
    operator_allow: tuple[str, ...] = ()
    operator_deny: tuple[str, ...] = ()

    def refusal_for_name(self, host: str) -> str | None:
        """Why `host` may not be reached (a sentence), or None when its name is allowed."""
        host = host.lower().rstrip(".")
        if (rule := matches(host, self.operator_deny)) is not None:
            return f"{host} is denied by the operator (SANDBOX_EGRESS_DENY {rule})"
        if (rule := matches(host, self.user_deny)) is not None:
            return f"{host} is denied by your settings (network.deny {rule})"
        if self.operator_allow and matches(host, self.operator_allow) is None:
            return f"{host} is not in the operator's allow list (SANDBOX_EGRESS_ALLOW)"
        if self.user_allow and matches(host, self.user_allow) is None:
            return f"{host} is not in your settings' allow list (network.allow)"
        return None


def classify(address: IPAddress) -> str | None:
    """Why a sandbox may never reach `address` (a phrase), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return classify(address.ipv4_mapped)
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if any(address in net for net in _RFC1918):
        return "a private address (RFC 1918)"
    if address in _CGNAT:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if address in _ULA:
        return "a unique local address (fc00::/7)"
    if not address.is_global:
        return "not a public address"
    return None


@dataclass
class AddressGuard:
    """The address check, with this host's own addresses and test-only exemptions.

    `exempt` exists for tests, whose upstreams can only be on loopback: production code never
    passes it, and a test shows that without it the same upstream is refused.
    """

    exempt: tuple[IPNetwork, ...] = ()
    _own: frozenset[IPAddress] = field(default_factory=frozenset)
    _own_read_at: float = -1e9
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be dialled (a sentence), or None."""
        if any(address in net for net in self.exempt if net.version == address.version):
            return None
        reason = classify(address)
        if reason is None and address in self.own_addresses():
            reason = "this host's own address"
        return f"{address} is {reason}" if reason else None

    def own_addresses(self) -> frozenset[IPAddress]:
        """The host's interface addresses, read again at most every 5 seconds."""
        with self._lock:
            if time.monotonic() - self._own_read_at > 5:
                self._own = host_addresses()
                self._own_read_at = time.monotonic()
            return self._own


def host_addresses() -> frozenset[IPAddress]:
    """Every address on this host's interfaces (IPv4 from /proc/net/fib_trie, IPv6 from if_inet6)."""
    found: set[IPAddress] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in zip(lines, lines[1:]):
        # "|-- 10.0.0.5" followed by "/32 host LOCAL" names an address of this host.
        if "/32 host LOCAL" in line and "|--" in previous:
            try:
                found.add(ipaddress.ip_address(previous.split("|--")[1].strip()))
            except ValueError:
                continue
    try:
        for row in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = row.split()[0]
            found.add(ipaddress.IPv6Address(bytes.fromhex(raw)))
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(found)
