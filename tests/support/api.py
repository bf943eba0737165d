"""Driving the REST API through chalice.test.Client over a chosen storage backend."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

from tests.support.s3 import create_bucket, storage_settings

ROOT = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}


@dataclass
class Api:
    """A test client plus a view of what the store holds."""

    client: Client
    backend: str
    data_dir: Path
    s3: Any = None
    bucket: str | None = None
    headers: dict[str, str] | None = None

    def _h(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**(self.headers or {}), **(extra or {})}

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.client.http.get(path, headers=self._h(headers))

    def delete(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.client.http.delete(path, headers=self._h(headers))

    def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | str | None = None) -> Any:
        payload = raw if raw is not None else (json.dumps(body) if body is not None else b"")
        return self.client.http.request(method, path, headers=self._h({**JSON, **(headers or {})}), body=payload)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.send("POST", path, body, **kw)

    def keys(self) -> dict[str, str]:
        """Every stored key with its ETag: a snapshot to compare before/after a request."""
        if self.backend == "local":
            from chalicelib.storage.local import LocalDirectoryStore

            store = LocalDirectoryStore(self.data_dir)
            from chalicelib.storage.listing import iter_all

            return {o.key: o.etag for o in iter_all(store, "")}
        found: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = obj["ETag"]
        return found

    def write_raw(self, key: str, body: bytes) -> None:
        """Write straight to the store, bypassing the API (as another tool or the mount would)."""
        if self.backend == "local":
            from chalicelib.storage.local import LocalDirectoryStore

            LocalDirectoryStore(self.data_dir).put(key, body)
            return
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def raw(self, key: str) -> bytes:
        if self.backend == "local":
            return (self.data_dir / key).read_bytes()
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()


def make_api(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str | None) -> Api:
    """An Api over the embedded store or over S3 on moto server."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SANDBOX_ROOT", str(tmp_path / "sandboxes"))
    s3 = bucket = None
    if backend == "s3":
        assert moto_endpoint is not None
        bucket = f"api-{uuid.uuid4().hex[:12]}"
        settings = storage_settings(moto_endpoint, bucket)
        create_bucket(settings)
        monkeypatch.setenv("S3_ENDPOINT_URL", moto_endpoint)
        monkeypatch.setenv("R2_BUCKET", bucket)
        monkeypatch.setenv("R2_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("S3_REGION", "auto")
        s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="auto")
    client = Client(__import__("app").app, stage_name="dev", project_dir=str(ROOT))
    return Api(client=client, backend=backend, data_dir=tmp_path / "data", s3=s3, bucket=bucket)
