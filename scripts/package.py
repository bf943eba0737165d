"""Package the app for AWS, wired so that the stack works: `./scripts/package`.

    ./scripts/package --stage prod out/                         # CloudFormation / SAM: out/sam.json + deployment.zip
    ./scripts/package --stage prod --format terraform out/      # Terraform: out/chalice.tf.json + override
    ./scripts/package --stage prod --with-otel out/             # the Lambda package carries OpenTelemetry (traces)

Beside the app's template goes the sandbox plane's (`deploy/`): out/sandbox-fleet.json (a
CloudFormation stack of its own) or out/sandbox-fleet/sandbox_fleet.tf.json (its own Terraform
root module), deployed first; its outputs are the app's SANDBOX_URL, subnets and security group.

Plain `chalice package` leaves two settings wrong for a CloudFormation stack: TURN_RUNNER_FUNCTION
names `claude-agent-backend-<stage>-turn_runner` (what `chalice deploy` calls it; CloudFormation
gives the function another name) and WEBSOCKET_URL is missing. This command always applies
`.chalice/merge-template-cfn-<stage>.json` (SAM) or copies `.chalice/terraform/<stage>_override.tf.json`
(Terraform), then checks the result and refuses to leave a template that lacks the wiring.

Packaging needs a region only because Chalice asks botocore for one; the templates do not depend
on it (they use the region they are deployed to), so without one this uses us-east-1 and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[1]
PACKAGING_REGION = "us-east-1"
FLEET_CFN = ROOT / "deploy" / "sandbox-fleet.json"
FLEET_TERRAFORM = ROOT / "deploy" / "sandbox_fleet.tf.json"


class PackagingError(Exception):
    """The package cannot be produced or is not wired; the message says what to do."""


def chalice_command() -> list[str]:
    """Chalice with a slimmed deployment.zip: what `./scripts/chalice` runs, in this interpreter
    (./scripts/package has set up the venv already; plain Chalice would ship the full package)."""
    return [sys.executable, "-m", "scripts.lambda_package"]


def packaging_env(environ: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The environment for Chalice, and a note when a region had to be supplied."""
    env = dict(environ)
    if env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"):
        env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION", ""))
        return env, None
    if boto3.session.Session().region_name:  # ~/.aws/config
        return env, None
    env["AWS_DEFAULT_REGION"] = PACKAGING_REGION
    return env, (f"no AWS region configured: packaging with {PACKAGING_REGION} (the template does not depend on it; "
                 "the stack gets the region you deploy it to)")


def check_sam(template: dict[str, Any]) -> None:
    """Every function but the runner is wired to this stack's turn runner and websocket API."""
    functions = {name: r for name, r in template.get("Resources", {}).items() if r.get("Type") == "AWS::Serverless::Function"}
    if "TurnRunner" not in functions:
        raise PackagingError("The template has no TurnRunner function: is app.py's turn_runner still declared?")
    for name, resource in functions.items():
        if name == "TurnRunner":
            continue  # it re-invokes itself by the name Lambda gives it at run time
        variables = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
        if variables.get("TURN_RUNNER_FUNCTION") != {"Ref": "TurnRunner"}:
            raise PackagingError(f"{name}: TURN_RUNNER_FUNCTION is {variables.get('TURN_RUNNER_FUNCTION')!r}, not "
                                 "{'Ref': 'TurnRunner'}: the merge template does not cover this function; add it there.")
        if "WebsocketAPI" not in json.dumps(variables.get("WEBSOCKET_URL")):
            raise PackagingError(f"{name}: WEBSOCKET_URL is not wired to the stack's WebsocketAPI: add it to the merge template.")


def check_terraform(template: dict[str, Any], override: dict[str, Any]) -> None:
    """Function names are Chalice's own, so TURN_RUNNER_FUNCTION must match; the override adds WEBSOCKET_URL."""
    functions = template.get("resource", {}).get("aws_lambda_function", {})
    runner = functions.get("turn_runner", {}).get("function_name")
    for name, function in functions.items():
        variables = function.get("environment", {}).get("variables", {})
        if name != "turn_runner" and variables.get("TURN_RUNNER_FUNCTION") != runner:
            raise PackagingError(f"{name}: TURN_RUNNER_FUNCTION is {variables.get('TURN_RUNNER_FUNCTION')!r}, but the turn "
                                 f"runner is named {runner!r}: fix the stage's environment in .chalice/config.json.")
    handler = override.get("resource", {}).get("aws_lambda_function", {}).get("api_handler", {})
    url = handler.get("environment", {}).get("variables", {}).get("WEBSOCKET_URL")
    if "aws_apigatewayv2_api.websocket_api" not in json.dumps(url):
        raise PackagingError("The Terraform override does not set WEBSOCKET_URL on api_handler.")


def package(stage: str, fmt: str, out: Path, environ: dict[str, str] | None = None, *, otel: bool = False) -> list[str]:
    """Run Chalice and wire the result; return notes for the user. Raises PackagingError.
    `otel`: the Lambda package also carries requirements-otel.txt (traces over OTLP)."""
    env, note = packaging_env(dict(os.environ if environ is None else environ))
    env["PACKAGE_WITH_OTEL"] = "1" if otel else "0"
    notes = [note] if note else []
    if out.exists() and any(out.iterdir()):
        raise PackagingError(f"{out} is not empty: Chalice would mix old and new files. Remove it or choose another folder.")
    if fmt == "sam":
        merge = ROOT / ".chalice" / f"merge-template-cfn-{stage}.json"
        if not merge.is_file():
            raise PackagingError(f"No .chalice/{merge.name}: copy merge-template-cfn-prod.json for stage {stage!r} "
                                 "(it wires TURN_RUNNER_FUNCTION and WEBSOCKET_URL and scopes the roles).")
        _run([*chalice_command(), "package", "--stage", stage, "--merge-template", str(merge), str(out)], env)
        check_sam(json.loads((out / "sam.json").read_text()))
        shutil.copy(FLEET_CFN, out / FLEET_CFN.name)
    else:
        override = ROOT / ".chalice" / "terraform" / f"{stage}_override.tf.json"
        if not override.is_file():
            raise PackagingError(f"No .chalice/terraform/{override.name}: copy prod_override.tf.json for stage {stage!r}.")
        _run([*chalice_command(), "package", "--pkg-format", "terraform", "--stage", stage, str(out)], env)
        shutil.copy(override, out / override.name)
        # New resources (failure queue, its wiring, access logs): an override file may only change
        # blocks Chalice wrote, so they live in a file of their own.
        hardening = override.with_name(f"{stage}_hardening.tf.json")
        if hardening.is_file():
            shutil.copy(hardening, out / hardening.name)
        check_terraform(json.loads((out / "chalice.tf.json").read_text()), json.loads(override.read_text()))
        # A folder of its own: one root module per stack, deployed before the app's.
        (out / "sandbox-fleet").mkdir()
        shutil.copy(FLEET_TERRAFORM, out / "sandbox-fleet" / FLEET_TERRAFORM.name)
    return notes


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise PackagingError(f"`{' '.join(argv[1:])}` failed ({done.returncode}):\n{done.stdout}{done.stderr}".rstrip())


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="./scripts/package", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("out", type=Path, help="output folder (new or empty)")
    cli.add_argument("--stage", default="prod", help="the .chalice/config.json stage (default prod)")
    cli.add_argument("--format", choices=("sam", "terraform"), default="sam", help="sam (CloudFormation; default) or terraform")
    cli.add_argument("--with-otel", action="store_true",
                     help="add the OpenTelemetry SDK and OTLP exporter (requirements-otel.txt) to the Lambda package: "
                          "traces are then sent wherever OTEL_EXPORTER_OTLP_ENDPOINT says (README: Operating it)")
    args = cli.parse_args(argv)
    try:
        notes = package(args.stage, args.format, args.out.resolve(), otel=args.with_otel)
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.format == "sam":
        print(f"{args.out}/sam.json and {args.out}/deployment.zip are ready (README: Deploy, the SAM path); "
              f"{args.out}/sandbox-fleet.json is the sandbox fleet's stack (README: Sandbox fleet stack).")
    else:
        print(f"{args.out}/chalice.tf.json and {args.stage}_override.tf.json are ready: terraform init && terraform apply there; "
              f"{args.out}/sandbox-fleet/ is the sandbox fleet's module (README: Sandbox fleet stack).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
