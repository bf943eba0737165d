"""Workspace archives and entries of a sandbox on a sandbox host (raw bytes, not base64 JSON).

Kept apart from `remote` so the archive routes can grow without touching the file protocol.
"""

from __future__ import annotations

from typing import Any

import httpx

from chalicelib.sandbox.base import WorkspaceEntry
from chalicelib.sandbox.remote_http import host_request
from chalicelib.sandbox.snapshot_format import SnapshotDelta, decode_frames, encode_frames


class RemoteArchiveMixin:
    """Export, import and entries for RemoteSandbox (needs `self.client.http` and `self.base`)."""

    client: Any
    base: str

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return host_request(self.client.http, method, self.base + path, **kwargs)

    def export_workspace(self, max_bytes: int, unless_md5: str | None = None) -> bytes | None:
        """The workspace (without .claude/skills) as a .tar.gz, made on the host; None (204) when unchanged."""
        params = {"maxBytes": str(max_bytes), **({"unlessMd5": unless_md5} if unless_md5 else {})}
        response = self._send("GET", "/archive", params=params)
        return None if response.status_code == 204 else response.content

    def import_workspace(self, archive: bytes, max_bytes: int) -> int:
        """Replace the workspace (skills untouched) by the archive; return the file count."""
        response = self._send("PUT", "/archive", params={"maxBytes": str(max_bytes)}, content=archive,
                              headers={"Content-Type": "application/gzip"})
        return int(response.json()["files"])

    def snapshot_unchanged(self) -> list[str]:
        """The root MD5s of the snapshots the workspace still matches (a walk on the host)."""
        return [str(m) for m in self._send("GET", "/snapshot/unchanged").json()["unchanged"]]

    def snapshot_delta(self, max_bytes: int, base: str | None) -> SnapshotDelta | None:
        """What a save writes against the stored root `base`, made on the host; None (204) when unchanged."""
        params = {"maxBytes": str(max_bytes), **({"base": base} if base else {})}
        response = self._send("POST", "/snapshot", params=params)
        return None if response.status_code == 204 else decode_frames(response.content)

    def import_snapshot(self, root: bytes, objects: dict[str, bytes], max_bytes: int) -> int:
        """Replace the workspace (skills untouched) by the snapshot's entries; return the file count."""
        response = self._send("PUT", "/snapshot", params={"maxBytes": str(max_bytes)},
                              content=encode_frames(root, objects),
                              headers={"Content-Type": "application/octet-stream"})
        return int(response.json()["files"])

    def workspace_entries(self) -> list[WorkspaceEntry]:
        """Every entry under /workspace but the skills."""
        return [WorkspaceEntry(**e) for e in self._send("GET", "/entries").json()["entries"]]

    @property
    def host(self) -> str:
        """The base URL of the sandbox host this sandbox lives on."""
        return str(self.client.http.base_url).rstrip("/")
