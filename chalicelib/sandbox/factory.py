"""Choose where sessions run from configuration."""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.config import Settings
from chalicelib.sandbox.base import IsolationUnavailable, SandboxProvider


def build_sandbox_provider(settings: Settings, resolve_host: Callable[[str], str | None] | None = None) -> SandboxProvider:
    """Sandbox hosts when SANDBOX_URL is set (one, or a comma-separated fleet), else local bubblewrap
    sandboxes. `resolve_host` says which host a session was placed on (from its record)."""
    if settings.sandbox.url:
        from chalicelib.sandbox.fleet import FleetSandboxProvider

        return FleetSandboxProvider(settings, resolve_host)
    try:
        from chalicelib.sandbox.bwrap import LocalSandboxProvider
    except ImportError as exc:
        # The Lambda package leaves the local provider out: sessions there run on a sandbox host.
        raise IsolationUnavailable(
            "This deployment has no local sandboxes (a Lambda cannot keep them): set SANDBOX_URL to the "
            "sandbox host's https URL (see Deploy in README.md)."
        ) from exc
    return LocalSandboxProvider(settings)
