"""What a cold start pays: `import app` must not load the anthropic SDK, boto3 or the services a
request has not asked for; inside Lambda the storage client is built at init, with the garbage
collector paused meanwhile; and Settings are read once per process, yet rebuilt whenever the
environment they came from changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chalice.test import Client

from chalicelib import config
from chalicelib.config import Settings, current_settings

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter: this test process has long since imported anthropic for other tests.
PROBE = """
import json, sys
import app
loaded_at_import = sorted({m.split('.')[0] for m in sys.modules}
                          & {'anthropic', 'httpx', 'jiter', 'distro', 'boto3', 's3transfer', 'yaml'})
services_at_import = sorted(m for m in sys.modules if m.startswith('chalicelib.services.') and m not in
                            ('chalicelib.services.' + n for n in ('health', 'limits', 'models', 'pagination', 'skills',
                                                                  'skill_bundle', 'skill_catalog', 'skill_folders', 'skill_format')))
from chalice.test import Client  # after the census: chalice's test tooling imports yaml itself
with Client(app.app) as client:
    statuses = [client.http.get('/health').status_code, client.http.get('/users/u/skills').status_code]
    ws = client.lambda_.invoke('ws_connect', {'requestContext': {'routeKey': '$connect', 'connectionId': 'c1',
        'domainName': 'd', 'stage': 'api', 'apiId': 'abc', 'eventType': 'CONNECT'},
        'queryStringParameters': {'sessionId': 'nope'}, 'headers': {}})
print(json.dumps({'atImport': loaded_at_import, 'servicesAtImport': services_at_import, 'statuses': statuses, 'connect': ws.payload.get('statusCode'),
                  'afterRequests': 'anthropic' in sys.modules}))
"""


def test_import_app_and_the_first_requests_do_not_load_anthropic(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC", "STORAGE", "R2_", "S3_"))}
    env.update({"DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["atImport"] == [], f"import app loaded {seen['atImport']}: only the turn runner may need them"
    # Each service is imported where the container builds it: a skills request does not pay for
    # the sessions', conversations' and settings' models.
    assert seen["servicesAtImport"] == [], seen["servicesAtImport"]
    assert seen["statuses"] == [200, 200]
    assert seen["connect"] == 404  # a websocket $connect cold start (unknown session) ran too
    assert seen["afterRequests"] is False


LAMBDA_INIT_PROBE = """
import gc, json, logging, sys
logging.basicConfig(level=logging.WARNING)
import app
from chalicelib.config import current_settings
from chalicelib.container import get_container
built = get_container(current_settings())._built.get('store')
from scripts.benchlib.lambda_child import rest_event  # API Gateway's event, as the benchmark sends it
response = app.app(rest_event('GET', '/users/{userId}/skills', '/users/u/skills', {'userId': 'u'},
                              headers={'Authorization': 'Bearer init-key'}), None)
print(json.dumps({'store': type(built).__name__ if built else None, 'gcEnabled': gc.isenabled(),
                  'frozen': gc.get_freeze_count(), 'boto3': 'boto3' in sys.modules,
                  'status': response['statusCode'], 'body': json.loads(response['body'])}))
"""


def lambda_init(tmp_path: Path, **env: str) -> tuple[dict[str, object], str]:
    """`import app` in a fresh interpreter that believes it is a Lambda container, then one
    GET /users/u/skills through the handler; what it saw, and what it logged."""
    scrubbed = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
                "AWS_LAMBDA_FUNCTION_NAME": "claude-agent-backend-prod-api_handler", "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "API_KEY": "init-key", **env}
    result = subprocess.run([sys.executable, "-c", LAMBDA_INIT_PROBE], cwd=ROOT, env=scrubbed, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_a_lambda_container_builds_the_storage_client_at_init(tmp_path: Path) -> None:
    # Nothing listens on port 9: building a client connects nowhere, and the request's 503 proves
    # it went on to use the client built at init.
    seen, _ = lambda_init(tmp_path, ENVIRONMENT="production", S3_ENDPOINT_URL="http://127.0.0.1:9",
                          R2_BUCKET="b", R2_ACCESS_KEY_ID="k", R2_SECRET_ACCESS_KEY="s", STORAGE_MAX_ATTEMPTS="1")
    assert seen["store"] == "S3Store"
    assert seen["boto3"] is False  # built on botocore alone
    assert seen["gcEnabled"] is True and seen["frozen"] > 10_000  # collecting again; init's objects frozen
    assert seen["status"] == 503 and seen["body"]["code"] == "storage_unavailable"


def test_a_failed_init_leaves_the_first_request_to_say_why(tmp_path: Path) -> None:
    """A misconfigured container still starts: a failed Lambda init would only give a bare 502."""
    seen, logged = lambda_init(tmp_path, ENVIRONMENT="production", STORAGE_BACKEND="local")  # refused there
    assert seen["store"] is None and seen["gcEnabled"] is True
    assert "the storage client was not built at init" in logged
    assert seen["status"] == 500 and seen["body"]["code"] == "local_store_in_production"


def test_outside_lambda_import_app_leaves_the_collector_alone(tmp_path: Path) -> None:
    probe = "import gc; gc.disable(); import app; print(gc.isenabled(), gc.get_freeze_count())"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "d")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "0"], result.stderr


def test_settings_are_read_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    calls: list[int] = []
    real = Settings.from_env.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Settings], environ: object = None) -> Settings:
        calls.append(1)
        return real(cls, environ)

    monkeypatch.setattr(Settings, "from_env", classmethod(counting))
    with Client(app.app) as client:
        for _ in range(3):
            assert client.http.get("/health").status_code == 200
            assert client.http.get("/users/u/skills", headers={"Origin": "https://x.example"}).status_code == 200
    assert len(calls) <= 1, f"Settings.from_env ran {len(calls)} times for 6 requests"
    assert current_settings() is current_settings()


def test_a_changed_environment_gets_fresh_settings_and_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "one"))
    with Client(app.app) as client:
        assert client.http.post("/users/u/skills", headers={"Content-Type": "application/json"},
                                body=json.dumps({"name": "a.md", "content": "# A"})).status_code == 200
        first = current_settings()
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "two"))
        assert json.loads(client.http.get("/users/u/skills").body)["count"] == 0  # the new directory's store
        assert current_settings() is not first and current_settings().storage.data_dir == tmp_path / "two"
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "one"))
        assert json.loads(client.http.get("/users/u/skills").body)["count"] == 1
        # AWS_REGION is read only when no R2 account is set: once read, it is part of the key.
        monkeypatch.delenv("R2_ACCOUNT_ID", raising=False)
        monkeypatch.setenv("STORAGE_BACKEND", "s3")
        monkeypatch.setenv("AWS_REGION", "eu-west-1")
        assert current_settings().storage.region == "eu-west-1"
        monkeypatch.setenv("AWS_REGION", "eu-central-1")
        assert current_settings().storage.region == "eu-central-1"
        monkeypatch.setenv("R2_BUCKET", "another-bucket")
        assert json.loads(client.http.get("/health").body)["bucket"] == "another-bucket"


def test_a_misconfiguration_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_TOKENS", "many")
    with pytest.raises(config.Misconfigured):
        current_settings()
    monkeypatch.setenv("MAX_TOKENS", "1024")
    assert current_settings().agent.max_tokens == 1024


def test_health_builds_neither_the_storage_nor_the_sandbox_client(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Load balancers call /health on cold containers: it names the storage backend and a remote
    sandbox host from the settings (building the S3 client was 56 ms of a cold /health)."""
    import app
    from chalicelib.container import get_container

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SANDBOX_URL", "http://127.0.0.1:9")  # nothing listens: building must not matter
    with Client(app.app) as client:
        assert json.loads(client.http.get("/health").body)["sandbox"] == "remote"
        # The Container the request used: chalice.test sets the dev stage's variables per request.
        stage_env = json.loads((ROOT / ".chalice/config.json").read_text())["stages"]["dev"]["environment_variables"]
        container = get_container(Settings.from_env({**os.environ, **stage_env}))
        assert container._built == {}  # no S3 client, no httpx client and its TLS context
        assert json.loads(client.http.get("/health").body)["storage"] == "local"
        assert container.sandboxes.kind == "remote"  # what building it would have said
