"""A real OpenID provider (npm's oidc-provider, run by node) on loopback, for the tenant tests.

Its package is installed with `npm ci` from tests/oidc/package-lock.json the first time; a
machine without node or npm skips the tests that need it, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.api import ROOT
from tests.support.sandbox_host import free_port

OIDC_DIR = ROOT / "tests" / "oidc"
AUDIENCE = "https://agent-api.test"
START_TIMEOUT = 30.0


def ensure_installed() -> None:
    """npm ci the provider's package unless it is there; skip when node or npm is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the OpenID provider (oidc-provider from npm)")
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR, capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci in {OIDC_DIR} failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class OidcProvider:
    """The provider process: every client id is an end user (sub = client id)."""

    port: int
    kids: list[str]
    audience: str = AUDIENCE
    ttl: int = 600
    process: subprocess.Popen[str] | None = field(default=None, repr=False)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OidcProvider:
        env = {**os.environ, "PORT": str(self.port), "AUDIENCE": self.audience, "KIDS": ",".join(self.kids),
               "CLIENTS": "alice,bob", "TTL": str(self.ttl)}
        self.process = subprocess.Popen(["node", "provider.mjs"], cwd=OIDC_DIR, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process.stdout is not None
        seen: list[str] = []
        while time.monotonic() < deadline and len(seen) < 100:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("listening "):
                return self
        self.stop()
        raise RuntimeError(f"the OpenID provider did not start:\n{''.join(seen)}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def rotate(self, kids: list[str]) -> None:
        """Restart with fresh keys named `kids` (the first signs): the issuer stays the same."""
        self.stop()
        self.kids = kids
        self.start()

    def token(self, user: str, resource: str | None = None) -> str:
        """An access token (a JWT) for `user`, from the provider's token endpoint."""
        response = httpx.post(f"{self.issuer}/token", auth=(user, f"{user}-secret"), timeout=10, data={
            "grant_type": "client_credentials", "scope": "api", "resource": resource or self.audience})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def jwks(self) -> dict:  # type: ignore[type-arg]
        return httpx.get(f"{self.issuer}/jwks", timeout=10).json()  # type: ignore[no-any-return]


@contextmanager
def oidc_provider(kids: list[str] | None = None) -> Iterator[OidcProvider]:
    """A started provider on a free loopback port, stopped afterwards."""
    ensure_installed()
    provider = OidcProvider(port=free_port(), kids=kids or ["k1"]).start()
    try:
        yield provider
    finally:
        provider.stop()
