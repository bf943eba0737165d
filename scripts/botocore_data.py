"""What of botocore's data files a Lambda reads, in the form it reads fastest.

Every S3 client botocore builds parses `endpoints.json` (1.25 MB: every endpoint of ~400
services in every partition) and S3's gzipped model (1.4 MB of JSON, four fifths of it
documentation strings used only for docstrings): about 20 ms of each cold start's CPU. In the
deployment package (`scripts/lambda_package.py` calls `slim_botocore_data` after dropping the
models of unlisted services):

- `endpoints.json` keeps, in every partition, only the services whose endpoint prefix belongs
  to a packaged service (everything at partition level stays, so region and partition lookups
  are unchanged);
- every kept model file (`service-2`, `endpoint-rule-set-1`, paginators, waiters) is written as
  compact, uncompressed JSON (the zip deflates it anyway; botocore reads `.json` before
  `.json.gz`), with every `documentation` string emptied;
- `examples-1` files, read only to write documentation, are dropped.

tests/unit/test_botocore_data.py checks that endpoints resolve exactly as with the full file.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DOCUMENTATION_KEYS = ("documentation", "documentationUrl")
DROPPED_FILES = ("examples-1",)


def strip_documentation(data: Any) -> Any:
    """`data` with every documentation string emptied (a member *named* documentation, a dict,
    stays). Emptied, not removed: botocore requires the key in places (clientContextParams)."""
    if isinstance(data, dict):
        return {k: "" if k in DOCUMENTATION_KEYS and isinstance(v, str) else strip_documentation(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [strip_documentation(v) for v in data]
    return data


def prune_endpoints(endpoints: dict[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """`endpoints.json` holding only the services with these endpoint prefixes."""
    keep = set(prefixes)
    pruned = dict(endpoints)
    pruned["partitions"] = [
        {**partition, "services": {name: service for name, service in partition.get("services", {}).items()
                                   if name in keep}}
        for partition in endpoints["partitions"]
    ]
    return pruned


def _read(path: Path) -> Any:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as body:
        return json.load(body)


def _write_compact(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def slim_botocore_data(data_dir: Path) -> None:
    """Rewrite botocore's data folder `data_dir` in place (its models already pruned to the
    packaged services)."""
    prefixes: set[str] = set()
    for model_file in sorted(data_dir.glob("*/*/*.json*")):
        kind = model_file.name.removesuffix(".gz").removesuffix(".json")  # service-2.sdk-extras is its own kind
        if kind in DROPPED_FILES:
            model_file.unlink()
            continue
        data = _read(model_file)
        if kind == "service-2":
            prefixes.add(data["metadata"]["endpointPrefix"])
        target = model_file.with_name(model_file.name.removesuffix(".gz"))
        model_file.unlink()
        _write_compact(target, strip_documentation(data))
    endpoints = data_dir / "endpoints.json"
    _write_compact(endpoints, prune_endpoints(_read(endpoints), prefixes))
