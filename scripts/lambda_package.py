"""Slim the Lambda deployment package that Chalice builds, and run Chalice with it.

What it does to the zip:
- keeps only the botocore (and boto3) service models listed in chalicelib.aws.PACKAGED_SERVICES,
  latest API version only: the other ~440 services are two thirds of the zipped package; and
  rewrites botocore's data so a client parses a tenth of the JSON (scripts/botocore_data.py:
  endpoints of the kept services only, models without documentation, uncompressed);
- compiles every module for the Lambda runtime: Lambda's /var/task is read-only, so without
  pycs every cold start compiles everything it imports again (1.9x the import CPU). Our code
  (app.py, chalicelib/, Chalice's runtime) keeps its source, with `__pycache__/*.cpython-311.pyc`
  compiled with `--invalidation-mode unchecked-hash` (used without reading or stat-ing the
  source). Third-party packages ship their pycs in place of their sources: sources and pycs
  together are 17 MB zipped, over the 12 MB budget, and a traceback through a library still
  names its file and line;
- drops what nothing imports at run time: PyYAML's C extension (the app parses with
  yaml.safe_load, pure Python), pip's `*.dist-info/RECORD` and `*.data/` folders, and any stale
  `.pyc` Chalice copied from the working tree; refuses a package holding local-only code
  (devserver/, tests/).

With PACKAGE_WITH_OTEL=1 (`./scripts/package --with-otel`) it also adds what requirements-otel.txt
locks (the OpenTelemetry SDK, the OTLP/HTTP exporter, protobuf), as wheels for the Lambda's
platform, so OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on (chalicelib/telemetry/tracing.py); the
default package leaves them out, as they would take it past its budget.

Chalice has no packaging hook, and `chalice deploy` cannot take a ready-made zip. So
`./scripts/chalice` runs Chalice's own CLI in this process, with the packager's
`create_deployment_package` followed by `slim`: `deploy` and both `package` formats then ship
the same slim zip. Chalice caches the package in .chalice/deployments/ under a hash of the
code and requirements, so the cached zip is slimmed in place (idempotently, marked by
SLIM_MARKER); a plain `chalice` run reuses it while the code is unchanged.

    ./scripts/chalice deploy --stage prod
    ./scripts/chalice package --stage prod out/
    .venv/bin/python -m scripts.lambda_package slim out/deployment.zip   # an existing zip
"""

from __future__ import annotations

import argparse
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chalicelib.aws import PACKAGED_SERVICES
from scripts.botocore_data import slim_botocore_data

# The runtime in .chalice/config.json's stages follows the interpreter that runs Chalice
# (Chalice picks python3.X from it), so the pycs are compiled by that same interpreter.
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
SLIM_MARKER = ".slim-package.json"
# Raised whenever `slim` changes what it does, so a zip Chalice cached is slimmed again.
SLIM_VERSION = 3
# Never shipped: the local gateway, tests, and what only the developer's machine runs.
FORBIDDEN_PREFIXES = ("devserver/", "tests/", "sandbox_host/", "scripts/", "web/", ".venv/")
# Sandboxes run on a sandbox host (SANDBOX_URL), never in a Lambda: the local bubblewrap
# provider and what only it uses stay out (chalicelib.sandbox.factory says so if one is asked for).
HOST_ONLY = ("chalicelib/sandbox/bwrap.py", "chalicelib/sandbox/shell.py", "chalicelib/sandbox/cgroups.py",
             "chalicelib/sandbox/uids.py", "chalicelib/sandbox/process.py", "chalicelib/sandbox/bwrap_argv.py",
             "chalicelib/sandbox/netns.py", "chalicelib/sandbox/egress_proxy.py")
# Shipped with their sources (and unchecked-hash pycs beside them): our own code.
SOURCE_PREFIXES = ("app.py", "chalicelib/", "chalice/")
DROPPED = re.compile(r"^(yaml/_yaml\.[^/]*\.so|[^/]+\.data/.*|[^/]+\.dist-info/RECORD)$")
# The Lambda's platform, for the wheels of requirements-otel.txt (protobuf has a compiled module).
LAMBDA_PLATFORM = "manylinux2014_x86_64"
OTEL_LOCK = Path(__file__).resolve().parents[1] / "requirements-otel.txt"
MODEL_DIR = re.compile(r"^(botocore|boto3)/data/([^/]+)/(\d{4}-\d{2}-\d{2})/")


class PackageError(Exception):
    """The package cannot be slimmed safely; the message says why and what to do."""


class StalePackage(PackageError):
    """The zip was slimmed before, for another service list or runtime."""


@dataclass(frozen=True)
class SlimReport:
    """What `slim` did, for the log and the tests."""

    zipped_before: int
    zipped_after: int
    unzipped_after: int
    files_after: int
    models_dropped: int
    pycs: int

    def describe(self) -> str:
        return (f"slimmed deployment package: {self.zipped_before / 1e6:.1f} MB -> {self.zipped_after / 1e6:.1f} MB "
                f"zipped ({self.unzipped_after / 1e6:.1f} MB unzipped, {self.files_after} files; "
                f"{self.models_dropped} service model folders dropped, {self.pycs} modules compiled for {RUNTIME})")


def _kept_model_versions(names: Iterable[str], services: Sequence[str]) -> dict[tuple[str, str], str]:
    """(package, service) -> the newest API version, for the services kept."""
    newest: dict[tuple[str, str], str] = {}
    for name in names:
        match = MODEL_DIR.match(name)
        if match and match.group(2) in services:
            key = (match.group(1), match.group(2))
            newest[key] = max(newest.get(key, ""), match.group(3))
    return newest


def _keep(name: str, newest: dict[tuple[str, str], str]) -> bool:
    if name.endswith((".pyc", ".pyo")) or "/__pycache__/" in f"/{name}" or DROPPED.match(name) or name in HOST_ONLY:
        return False
    match = MODEL_DIR.match(name)
    if match:
        return newest.get((match.group(1), match.group(2))) == match.group(3)
    return True


def with_otel(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the package carries the OpenTelemetry SDK (PACKAGE_WITH_OTEL=1, set by --with-otel)."""
    return environ.get("PACKAGE_WITH_OTEL", "") in ("1", "true", "yes")


def slim(zip_path: Path, services: Sequence[str] = PACKAGED_SERVICES, *, otel: bool = False) -> SlimReport | None:
    """Slim `zip_path` in place; None when it was already slimmed for these services.

    Raises PackageError when the package holds local-only code, lacks a listed service's model,
    or a module does not compile.
    """
    before = zip_path.stat().st_size
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        if SLIM_MARKER in names:
            marker = json.loads(archive.read(SLIM_MARKER))
            if marker == _marker(services, otel):
                return None
            raise StalePackage(f"{zip_path} was slimmed for other services, another runtime or by an older "
                               f"version of this script ({marker}): "
                               "delete it (and .chalice/deployments/) and package again.")
        forbidden = sorted({n.split("/")[0] for n in names if n.startswith(FORBIDDEN_PREFIXES)})
        if forbidden:
            raise PackageError(f"{zip_path} holds local-only code ({', '.join(forbidden)}/): Chalice ships app.py, "
                               "chalicelib/ and vendor/; move it out of chalicelib/ and vendor/.")
        newest = _kept_model_versions(names, services)
        missing = [s for s in services if ("botocore", s) not in newest]
        if missing:
            raise PackageError(f"botocore in {zip_path} has no model for {', '.join(missing)}: fix "
                               "chalicelib.aws.PACKAGED_SERVICES or raise the boto3 pin in requirements.txt.")
        dropped_models = {m.group(0) for n in names if (m := MODEL_DIR.match(n)) and not _keep(n, newest)}
        with tempfile.TemporaryDirectory(prefix="slim-package-") as tmp:
            root = Path(tmp)
            for info in archive.infolist():
                if not info.is_dir() and _keep(info.filename, newest):
                    archive.extract(info, root)
            slim_botocore_data(root / "botocore" / "data")
            if otel:
                add_locked_packages(root, OTEL_LOCK)
            pycs = _compile(root)
            (root / SLIM_MARKER).write_text(json.dumps(_marker(services, otel)))
            _write_zip(root, zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        infos = archive.infolist()
    return SlimReport(before, zip_path.stat().st_size, sum(i.file_size for i in infos), len(infos),
                      len(dropped_models), pycs)


def _marker(services: Sequence[str], otel: bool = False) -> dict[str, object]:
    marker: dict[str, object] = {"services": list(services), "runtime": RUNTIME, "version": SLIM_VERSION}
    if otel:
        marker["otel"] = True
    return marker


def add_locked_packages(root: Path, lock: Path) -> list[str]:
    """Install what `lock` pins, as wheels for the Lambda's platform (manylinux x86_64, this
    Python), into the unzipped package at `root`; a package already there (a shared dependency,
    at the same version: the locks are compiled against one another) is kept as it is, and a
    namespace package (`opentelemetry/`, `google/`) is merged into. Returns the top-level names
    added or merged into."""
    with tempfile.TemporaryDirectory(prefix="otel-wheels-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--require-hashes", "--no-deps", "--only-binary=:all:", "--platform", LAMBDA_PLATFORM,
                               "--implementation", "cp", "--python-version", RUNTIME.removeprefix("python"),
                               "--target", tmp, "-r", str(lock)], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise PackageError(f"could not install {lock.name} for the Lambda's platform:\n{done.stderr.strip()[-2000:]}")
        added = []
        for entry in sorted(Path(tmp).iterdir()):
            target = root / entry.name
            if entry.name == "bin" or (target.exists() and (entry.name.endswith(".dist-info") or not entry.is_dir())):
                continue
            if entry.is_dir():
                shutil.copytree(entry, target, dirs_exist_ok=True)
            else:
                shutil.move(str(entry), target)
            added.append(entry.name)
    return added


def _compile(root: Path) -> int:
    """Compile every module under `root`: beside its source for our code, in its place for the
    rest. Returns how many pycs were written."""
    failures: list[str] = []
    sources = sorted(root.rglob("*.py"))
    for source in sources:
        name = str(source.relative_to(root))
        keep_source = name.startswith(SOURCE_PREFIXES)
        try:
            # dfile: tracebacks in AWS show the path the file has in /var/task.
            py_compile.compile(str(source), cfile=None if keep_source else str(source.with_suffix(".pyc")),
                               dfile=name, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        except py_compile.PyCompileError as exc:
            failures.append(f"{name}: {exc.msg.strip().splitlines()[-1]}")
            continue
        if not keep_source:
            source.unlink()
    if failures:
        raise PackageError(f"{len(failures)} modules do not compile for {RUNTIME}: " + "; ".join(failures[:5]))
    return len(sources)


def _write_zip(root: Path, zip_path: Path) -> None:
    partial = zip_path.with_name(zip_path.name + ".slim.tmp")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                # Lambda runs the code as another user than the one that unzips it: keep modes readable.
                info = zipfile.ZipInfo.from_file(path, str(path.relative_to(root)))
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with path.open("rb") as body:
                    out.writestr(info, body.read(), compresslevel=9)
    os.replace(partial, zip_path)


def install_packaging_hook() -> None:
    """Make Chalice slim every deployment package it builds, before deploy or package use it."""
    from chalice.deploy import packager

    build = packager.LambdaDeploymentPackager.create_deployment_package
    if getattr(build, "slims", False):
        return

    def create_deployment_package(self: packager.LambdaDeploymentPackager, project_dir: str,
                                  python_version: str) -> str:
        if python_version != RUNTIME:
            raise PackageError(f"Chalice targets {python_version} but this interpreter is {RUNTIME}: the pycs "
                               f"would not load. Run ./scripts/chalice with {python_version}.")
        filename: str = build(self, project_dir, python_version)
        try:
            report = slim(Path(filename), otel=with_otel())
        except StalePackage:
            # Chalice's cache, slimmed for an older PACKAGED_SERVICES: build it afresh.
            os.remove(filename)
            filename = build(self, project_dir, python_version)
            report = slim(Path(filename), otel=with_otel())
        if report is not None:
            print(report.describe(), file=sys.stderr)
        return filename

    def refuse_layer(self: object, project_dir: str, python_version: str) -> str:
        raise PackageError("automatic_layer is on in .chalice/config.json: the slim package covers the function "
                           "zip only. Turn automatic_layer off.")

    create_deployment_package.slims = True  # type: ignore[attr-defined]
    packager.LambdaDeploymentPackager.create_deployment_package = create_deployment_package  # type: ignore[method-assign]
    packager.LayerDeploymentPackager.create_deployment_package = refuse_layer  # type: ignore[assignment,method-assign]


def run_chalice(argv: Sequence[str]) -> int:
    """Chalice's CLI (`chalice ARGV...`), with every deployment package it builds slimmed."""
    from chalice.cli import main as chalice_main

    install_packaging_hook()
    sys.argv = ["chalice", *argv]
    try:
        return int(chalice_main() or 0)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["slim"]:
        parser = argparse.ArgumentParser(prog="lambda_package slim", description="Slim a deployment.zip in place.")
        parser.add_argument("zip", type=Path)
        parser.add_argument("--with-otel", action="store_true", help="add requirements-otel.txt (OpenTelemetry SDK)")
        parsed = parser.parse_args(args[1:])
        zip_path = parsed.zip
        try:
            report = slim(zip_path, otel=parsed.with_otel)
        except PackageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(report.describe() if report else f"{zip_path} is already slim")
        return 0
    try:
        return run_chalice(args)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
