"""Choose where sessions run from configuration."""

from __future__ import annotations

from chalicelib.config import Settings
from chalicelib.sandbox.base import SandboxProvider


def build_sandbox_provider(settings: Settings) -> SandboxProvider:
    """A remote sandbox host when SANDBOX_URL is set, else local bubblewrap sandboxes."""
    if settings.sandbox.url:
        from chalicelib.sandbox.remote import RemoteSandboxProvider

        return RemoteSandboxProvider(settings)
    from chalicelib.sandbox.bwrap import LocalSandboxProvider

    return LocalSandboxProvider(settings)
