"""One Lambda cold start, inside an unzipped deployment package: run as its own interpreter.

    python -S -I scripts/benchlib/lambda_child.py PACKAGE_DIR app|baseline|seed

`-S -I`: no site-packages, no PYTHONPATH, so only the package (and the standard library) can be
imported, as in /var/task. It imports the handler module, then serves GET /health and
GET /users/u/skills as API Gateway proxy events, and prints one JSON line of timings. `app` is
this product; `baseline` is the bare minimum any Chalice app on S3 pays, as issue 16 measured it:
`import chalice, boto3`, a Chalice app and an S3 client (created at import), then the same two
routes, the second listing the same prefix. `seed` uploads the user's one skill through the app's
own POST route, as a user of the product would have (so the skill bundle exists), and times nothing.

It imports nothing from this repository (the package is all there is), so the packaging test
loads `rest_event` and `invoke` from this file too.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any


def rest_event(method: str, resource_path: str, path: str, path_params: dict[str, str] | None = None,
               body: str | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway REST proxy event, as Lambda hands it to Chalice."""
    return {
        "resource": resource_path, "path": path, "httpMethod": method,
        "headers": {"Host": "bench.example", **(headers or {})}, "multiValueHeaders": None,
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": path_params, "stageVariables": None, "body": body, "isBase64Encoded": False,
        "requestContext": {"resourcePath": resource_path, "httpMethod": method, "path": f"/api{path}",
                           "stage": "api", "requestId": "bench", "identity": {"sourceIp": "127.0.0.1"}},
    }


class _Context:
    function_name = "api_handler"
    aws_request_id = "bench"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 29_000


def invoke(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Call a Lambda handler with `event`; its response must be a 2xx."""
    response: dict[str, Any] = handler(event, _Context())
    if not 200 <= response["statusCode"] < 300:
        raise RuntimeError(f"{event['httpMethod']} {event['path']} answered {response['statusCode']}: {response['body']}")
    return response


def _baseline() -> Any:
    import boto3
    from chalice import Chalice

    app = Chalice(app_name="baseline")
    s3 = boto3.session.Session().client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], region_name="us-east-1")

    @app.route("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.route("/users/{userId}/skills")
    def skills(userId: str) -> dict[str, Any]:  # noqa: N803 - the route's name
        listed = s3.list_objects_v2(Bucket=os.environ["R2_BUCKET"], Prefix=f"users/{userId}/skills/")
        return {"skills": [o["Key"] for o in listed.get("Contents", [])]}

    return app


def _two_requests(handler: Any) -> None:
    invoke(handler, rest_event("GET", "/health", "/health"))
    invoke(handler, rest_event("GET", "/users/{userId}/skills", "/users/u/skills", {"userId": "u"},
                               headers={"Authorization": "Bearer bench"}))


SEED_SKILL = {"name": "debugging.md", "content": "# Debugging\n\nRead the logs."}


def main(package: str, which: str) -> None:
    sys.path.insert(0, package)
    os.chdir(package)
    if which == "seed":
        import app as seeding

        invoke(seeding.app, rest_event("POST", "/users/{userId}/skills", "/users/u/skills", {"userId": "u"},
                                       body=json.dumps(SEED_SKILL),
                                       headers={"Authorization": "Bearer bench", "Content-Type": "application/json"}))
        return
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if which == "app":
        import app as module

        handler = module.app
    else:
        handler = _baseline()
    cpu1, wall1 = time.process_time(), time.perf_counter()
    modules = len(sys.modules)
    _two_requests(handler)
    cpu2, wall2 = time.process_time(), time.perf_counter()
    _two_requests(handler)  # again, warm: what the same work costs without first-use costs
    cpu3 = time.process_time()
    print(json.dumps({
        "importCpu": cpu1 - cpu0, "importWall": wall1 - wall0,
        "requestCpu": cpu2 - cpu1, "requestWall": wall2 - wall1,
        "totalCpu": cpu2 - cpu0, "totalWall": wall2 - wall0, "warmCpu": cpu3 - cpu2,
        "modules": modules, "anthropic": "anthropic" in sys.modules,
        "peakMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
