"""python -m devserver: serve the whole product on one local port."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stage", default="dev", help="the .chalice/config.json stage (default dev)")
    parser.add_argument("--app", default="app:app", help="module:attribute of the Chalice app")
    parser.add_argument("--project-dir", default=".", type=Path)
    parser.add_argument("--offline-model", action="store_true",
                        help="answer with a local stand-in for the Messages API (not Claude; no key needed) "
                             "that lists and reads the user's skills with the bash tool")
    args = parser.parse_args(argv)

    project = args.project_dir.resolve()
    sys.path.insert(0, str(project))
    _load_dotenv(project / ".env")
    from devserver.logs import redact_tokens
    from devserver.server import LocalGatewayApp, load_config

    config = load_config(project, args.stage)
    for key, value in config.environment_variables.items():
        os.environ.setdefault(key, value)  # as `chalice local` does; the shell's values win
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    os.environ["LOCAL_GATEWAY_URL"] = base
    os.environ.setdefault("TURN_RUNNER_FUNCTION", "turn_runner")
    if args.offline_model:
        from devserver.offline_model import OfflineModel

        # The flag wins over a key in the shell or .env: the user asked for the stand-in.
        stand_in = OfflineModel().start()
        os.environ.update({"ANTHROPIC_BASE_URL": stand_in.url, "ANTHROPIC_API_KEY": "offline-stand-in", "OFFLINE_MODEL": "1"})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    module_name, _, attribute = args.app.partition(":")
    chalice_app = getattr(importlib.import_module(module_name), attribute or "app")
    gateway = LocalGatewayApp(chalice_app, config, static_dir=project / "web", app_module=module_name)
    _start_reaper()
    _banner(base)
    _resume_turns_once_up(base)
    import uvicorn

    logging.getLogger("uvicorn.access").addFilter(_skip_management_calls)
    redact_tokens()
    # API Gateway negotiates no permessage-deflate, so neither does its stand-in: clients see
    # the same frames, and the relay spends no CPU compressing every streamed delta.
    # Frames capped at API Gateway's 128 KB message limit.
    # uvicorn stops gracefully on SIGTERM and then raises it again with the handler it found. The
    # default handler would end the process on the spot, skipping exit handlers: sandboxes'
    # tmpfs workspaces and uid records would outlive it. Make SIGTERM an ordinary exit, as Ctrl-C is.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, and every local client is
    # 127.0.0.1: only the proxies TRUSTED_PROXIES names may say who the client is.
    from chalicelib.config import current_settings

    trusted = current_settings().trusted_proxies
    uvicorn.run(gateway.asgi, host=args.host, port=args.port, ws="websockets-sansio", ws_per_message_deflate=False,
                ws_max_size=128 * 1024, log_level="info", access_log=True, proxy_headers=bool(trusted),
                forwarded_allow_ips=",".join(trusted) if trusted else None)
    return 0


def _resume_turns_once_up(base: str) -> None:
    """A restart (or kill -9) ends every turn this process ran: once the server answers, start
    runners for the sessions left running, so they recover without waiting for a client."""

    def resume() -> None:
        import httpx

        for _ in range(600):  # bounded: a minute for the server to come up
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        from chalicelib.web.websocket import resume_interrupted_turns

        try:
            resumed = resume_interrupted_turns()
        except Exception:  # noqa: BLE001 - a client's next connect or message recovers them instead
            logging.getLogger("gateway").exception("could not look for interrupted turns")
            return
        if resumed:
            logging.getLogger("gateway").info("resuming interrupted turns of sessions %s", ", ".join(resumed))

    threading.Thread(target=resume, name="resume-turns", daemon=True).start()


def _start_reaper() -> None:
    """Local sandboxes are destroyed after SANDBOX_IDLE_TIMEOUT, as on the sandbox host."""
    from chalicelib.config import current_settings
    from chalicelib.container import get_container
    from devserver.reaper import IdleReaper

    def provider() -> object | None:
        try:
            return get_container(current_settings()).sandboxes
        except Exception:  # noqa: BLE001 - no sandboxes here (bubblewrap missing): nothing to reap; setup says why
            return None

    def save(session_id: str) -> None:
        get_container(current_settings()).sessions.save_workspace(session_id)

    sandbox = current_settings().sandbox
    def lost(session_id: str, message: str) -> None:
        get_container(current_settings()).sessions.remember_lost_save(session_id, message)

    IdleReaper(provider, sandbox.idle_timeout_seconds, before_destroy=save, max_idle_seconds=sandbox.max_idle,
               on_lost_save=lost).start()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def _skip_management_calls(record: logging.LogRecord) -> bool:
    """Keep the access log readable: one streamed answer makes thousands of /@connections calls."""
    message = record.getMessage()
    return "/@connections/" not in message and "/%40connections/" not in message  # uvicorn logs it quoted


def _load_dotenv(path: Path) -> None:
    """Secrets for local runs come from the environment or a git-ignored .env file."""
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def _banner(base: str) -> None:
    from chalicelib.config import Settings

    settings = Settings.from_env()
    storage = settings.storage
    where = f"embedded directory {storage.data_dir.resolve()}" if storage.backend == "local" else (
        f"bucket {storage.bucket} at {storage.endpoint_url or 'AWS S3'}")
    if settings.agent.offline_model:
        model = (f"OFFLINE STAND-IN at {settings.agent.anthropic_base_url}, not Claude: canned replies that list and "
                 "read the user's skills (restart without --offline-model to use ANTHROPIC_API_KEY)")
    elif settings.agent.anthropic_api_key:
        model = f"Claude at {settings.agent.anthropic_base_url or 'https://api.anthropic.com'} (ANTHROPIC_API_KEY set)"
    else:
        model = "NOT SET: the agent will answer with an error until ANTHROPIC_API_KEY is set (or try --offline-model)"
    lines = [
        f"Claude agent backend ({settings.environment}) on {base}",
        f"  REST       {base}/health",
        f"  WebSocket  {base.replace('http', 'ws', 1)}/ws",
        f"  Socket.IO  {base}/socket.io/ (namespaces / and /ws; the original's events)",
        f"  console    {base}/",
        f"  storage    {where}",
        f"  model      {model}",
    ]
    if settings.api_key is None and settings.is_production:
        lines.append("  !!! ENVIRONMENT=production and API_KEY is not set: every request but /health is refused "
                     "(500 api_key_not_configured). Set API_KEY. !!!")
    elif settings.api_key is None:
        lines.append("  !!! API_KEY is not set: every endpoint is open (development only). Set API_KEY to require it. !!!")
    lines.append(_user_token_hint(base, settings))
    print("\n".join(lines), flush=True)


def _user_token_hint(base: str, settings: Settings) -> str:
    """How to get an end user's token here (README: End users, tokens and quotas)."""
    key = " -H 'Authorization: Bearer $API_KEY'" if settings.api_key is not None else ""
    if settings.auth.user_token_secret is None:
        return ("  user tokens: set USER_TOKEN_SECRET (32+ random characters) to mint them with "
                f"curl -X POST {base}/users/<userId>/tokens{key}")
    return (f"  user tokens: curl -X POST {base}/users/<userId>/tokens{key}   "
            f"then open {base}/#token=<token> (the console) or ./scripts/chat --token <token>: "
            "either reaches only that user's data")


if __name__ == "__main__":
    sys.exit(main())
