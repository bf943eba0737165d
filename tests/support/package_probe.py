"""Run inside an unzipped deployment package: every AWS client the app creates, through the app's
own code, plus the model client, against moto server and the fake Messages API.

    python -S -I tests/support/package_probe.py PACKAGE_DIR

`-S -I`: only the package (and the standard library) can be imported, as in /var/task. The
environment (set by the test) points every AWS client at moto server and ANTHROPIC_BASE_URL at
the fake. Prints one JSON line: the botocore service models loaded and what each step gave
("ok", or the error). This file imports nothing from the repository but lambda_child's helpers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

package = sys.argv[1]
sys.path.insert(0, package)
_spec = importlib.util.spec_from_file_location(
    "lambda_child", Path(__file__).resolve().parents[2] / "scripts" / "benchlib" / "lambda_child.py")
assert _spec is not None and _spec.loader is not None
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)

import botocore.loaders  # noqa: E402 - only importable once the package is on sys.path

loaded: list[str] = []
_load = botocore.loaders.Loader.load_service_model


def _recording(self: Any, service_name: str, type_name: str, api_version: str | None = None) -> Any:
    loaded.append(service_name)
    return _load(self, service_name, type_name, api_version)


botocore.loaders.Loader.load_service_model = _recording  # type: ignore[method-assign]
results: dict[str, str] = {}


def step(name: str, run: Callable[[], Any], reaches_server: tuple[type[BaseException], ...] = ()) -> None:
    """Run one step. Errors in `reaches_server` prove the request was built and its answer parsed."""
    from botocore.exceptions import DataNotFoundError, UnknownServiceError

    try:
        run()
        results[name] = "ok"
    except (UnknownServiceError, DataNotFoundError, ImportError):  # what a pruned package gets wrong
        results[name] = traceback.format_exc(limit=4)
    except reaches_server as exc:
        results[name] = f"ok (the server answered {type(exc).__name__})"
    except Exception:  # noqa: BLE001 - reported to the test, which names the step
        results[name] = traceback.format_exc(limit=4)


def rest() -> None:
    import app

    auth = {"Authorization": "Bearer key-from-ssm", "Content-Type": "application/json"}
    body = json.dumps({"name": "probe.md", "content": "# Probe\n\nCheck the package."})
    child.invoke(app.app, child.rest_event("POST", "/users/{userId}/skills", "/users/u/skills", {"userId": "u"},
                                           body=body, headers=auth))
    listed = child.invoke(app.app, child.rest_event("GET", "/users/{userId}/skills", "/users/u/skills",
                                                    {"userId": "u"}, headers=auth))
    assert json.loads(listed["body"])["skills"] == ["probe.md"], listed


def secrets_manager() -> None:
    from chalicelib import secrets
    from chalicelib.aws import aws_session

    assert secrets.fetch("secretsmanager:probe", aws_session())["API_KEY"] == "key-from-secretsmanager"


def turn_runner_dispatch() -> None:
    from chalicelib.config import current_settings
    from chalicelib.container import get_container

    get_container(current_settings()).dispatcher.dispatch("probe-session")


def websocket_send() -> None:
    import app

    app.app.websocket_api.configure("abc.execute-api.us-east-1.amazonaws.com", "api")
    app.app.websocket_api.send("probe-connection", "hello")


def credential_chain() -> None:
    from chalicelib.aws import aws_session

    aws_session().client("sts").get_caller_identity()
    for service in ("sso", "sso-oidc", "signin"):
        aws_session().client(service, region_name="us-east-1")


def cloud_map() -> None:
    from chalicelib.sandbox.discovery import cloud_map_client

    # The client the fleet builds, called directly (the fleet would wrap a missing model in its own
    # error). moto answers an unknown namespace with an empty list or an error; either way the
    # request was built from the packaged model, without the `data-` prefix for the configured endpoint.
    cloud_map_client().discover_instances(NamespaceName="probe.internal", ServiceName="hosts", HealthStatus="ALL")


def model_client() -> None:
    from chalicelib.agent.model_client import build_client
    from chalicelib.agent.turn import AgentTurn  # noqa: F401 - the turn runner's whole import chain
    from chalicelib.config import current_settings

    client = build_client(current_settings().agent)
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == "hello from the package", text


def main() -> None:
    from botocore.exceptions import ClientError
    from chalice.app import WebsocketDisconnectedError

    from chalicelib.errors import AppError

    step("s3 and ssm: REST through the Lambda handler", rest)
    step("secretsmanager: secrets.fetch", secrets_manager)
    step("lambda: the turn dispatcher", turn_runner_dispatch, reaches_server=(AppError, ClientError))
    step("apigatewaymanagementapi: websocket_api.send", websocket_send,
         reaches_server=(ClientError, WebsocketDisconnectedError))
    step("sts, sso, sso-oidc, signin: the credential chain's clients", credential_chain)
    step("servicediscovery: Cloud Map's DiscoverInstances", cloud_map, reaches_server=(ClientError,))
    step("anthropic: the model client streams", model_client)
    print(json.dumps({"loaded": sorted(set(loaded)), "results": results}))


main()
