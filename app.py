"""The Claude agent backend: every route and websocket handler, each delegating to chalicelib.

Read this file as the table of contents: REST routes for user data, then sessions, then the
WebSocket handlers and the turn runner.
"""

from chalicelib import cold_start

cold_start.begin()  # inside Lambda, before the imports below: see chalicelib/cold_start.py

from chalice import Chalice, Rate

from chalicelib import chalice_local
from chalicelib.aws import aws_session
from chalicelib.ids import validate_id
from chalicelib.services.health import check_health
from chalicelib.services.limits import MAX_CONVERSATION_BYTES, MAX_SETTINGS_BYTES, MAX_SKILL_UPLOAD_BYTES
from chalicelib.services.skills import SkillUpload
from chalicelib.telemetry import json_logs, tracing
from chalicelib.web import websocket
from chalicelib.web.access import Access
from chalicelib.web.downloads import file_response
from chalicelib.web.responses import Reply, etag_header
from chalicelib.web.routing import Api, RequestContext

app = Chalice(app_name="claude-agent-backend")
app.experimental_feature_flags.update(["WEBSOCKETS"])
# Workspace downloads of these types travel as binary through API Gateway.
app.api.binary_types.extend(["application/gzip", "application/pdf"])
api = Api(app)
chalice_local.prepare()  # under `chalice local` only: its autoreloader and SIGTERM (see the module)


# -- Health ------------------------------------------------------------------------------


@api.route("/health", methods=["GET"], public=True)
def health(ctx: RequestContext):
    return check_health(ctx.settings, ctx.services.sandbox_kind,
                        sandbox_limits=ctx.services.sandbox_limits)


# -- Skills ------------------------------------------------------------------------------


@api.route("/users/{userId}/skills", methods=["POST"])
def upload_skill(ctx: RequestContext, userId: str):
    cond = ctx.request.conditions()
    body = ctx.request.body(SkillUpload, max_bytes=MAX_SKILL_UPLOAD_BYTES)
    ctx.check_storage_quota(userId)
    result, etag = ctx.services.skills.upload(userId, body, cond.if_match, cond.if_none_match)
    return Reply(result, headers=etag_header(etag))


@api.route("/users/{userId}/skills", methods=["GET"])
def list_skills(ctx: RequestContext, userId: str):
    limit = ctx.request.query_int("limit", default=1000, minimum=1, maximum=1000)
    return ctx.services.skills.list(userId, limit, ctx.request.query("cursor"))


@api.route("/users/{userId}/skills/{skillName}", methods=["GET"])
def get_skill(ctx: RequestContext, userId: str, skillName: str):
    result, etag = ctx.services.skills.get(userId, skillName)
    return Reply(result, headers=etag_header(etag))


@api.route("/users/{userId}/skills/{skillName}", methods=["DELETE"])
def delete_skill(ctx: RequestContext, userId: str, skillName: str):
    return ctx.services.skills.delete(userId, skillName)


# -- Conversations -----------------------------------------------------------------------


@api.route("/users/{userId}/conversations", methods=["POST"])
def save_conversation(ctx: RequestContext, userId: str):
    cond = ctx.request.conditions()
    body = ctx.request.raw_json(max_bytes=MAX_CONVERSATION_BYTES)
    ctx.check_storage_quota(userId)
    result, etag = ctx.services.conversations.save_body(userId, body, cond.if_match, cond.if_none_match)
    return Reply(result, headers=etag_header(etag))


@api.route("/users/{userId}/conversations", methods=["GET"])
def list_conversations(ctx: RequestContext, userId: str):
    limit = ctx.request.query_int("limit", default=100, minimum=1, maximum=1000)
    return ctx.services.conversations.list(userId, limit, ctx.request.query("cursor"))


@api.route("/users/{userId}/conversations/{conversationId}", methods=["GET"])
def get_conversation(ctx: RequestContext, userId: str, conversationId: str):
    result, etag = ctx.services.conversations.get(userId, conversationId)
    return Reply(result, headers=etag_header(etag))


@api.route("/users/{userId}/conversations/{conversationId}", methods=["DELETE"])
def delete_conversation(ctx: RequestContext, userId: str, conversationId: str):
    return ctx.services.conversations.delete(userId, conversationId)


# -- Settings ----------------------------------------------------------------------------


@api.route("/users/{userId}/settings", methods=["GET"])
def get_settings(ctx: RequestContext, userId: str):
    result, etag = ctx.services.user_settings.view(userId)
    return Reply(result, headers=etag_header(etag))


@api.route("/users/{userId}/settings", methods=["PUT"])
def put_settings(ctx: RequestContext, userId: str):
    cond = ctx.request.conditions()
    body = ctx.request.raw_json(max_bytes=MAX_SETTINGS_BYTES)
    result, etag = ctx.services.user_settings.replace(userId, body, cond.if_match, cond.if_none_match)
    return Reply(result, headers=etag_header(etag))


@api.route("/users/{userId}/settings", methods=["PATCH"])
def patch_settings(ctx: RequestContext, userId: str):
    cond = ctx.request.conditions()
    body = ctx.request.raw_json(max_bytes=MAX_SETTINGS_BYTES)
    result, etag = ctx.services.user_settings.patch(userId, body, cond.if_match)
    return Reply(result, headers=etag_header(etag))


# -- Users -------------------------------------------------------------------------------


@api.route("/users/{userId}", methods=["DELETE"], access=Access.OPERATOR)
def erase_user(ctx: RequestContext, userId: str):
    return ctx.services.users.erase(userId)


@api.route("/users/{userId}/usage", methods=["GET"])
def get_usage(ctx: RequestContext, userId: str):
    return ctx.services.usage.report(validate_id(userId, "userId"), ctx.request.query("from"), ctx.request.query("to"))


@api.route("/users/{userId}/limits", methods=["GET"])
def get_limits(ctx: RequestContext, userId: str):
    return ctx.services.quotas.limits(validate_id(userId, "userId"))


@api.route("/users/{userId}/limits", methods=["PUT"], access=Access.OPERATOR)
def put_limits(ctx: RequestContext, userId: str):
    # Imported here: the REST Lambda's cold start imports no service it may not use.
    from chalicelib.services.quotas import LimitsUpdate

    body = ctx.request.body(LimitsUpdate, max_bytes=MAX_SETTINGS_BYTES)
    return ctx.services.quotas.set_limits(validate_id(userId, "userId"), body)


@api.route("/users/{userId}/tokens", methods=["POST"], access=Access.OPERATOR)
def mint_user_token(ctx: RequestContext, userId: str):
    return ctx.services.user_tokens.mint(validate_id(userId, "userId"))


@api.route("/me", methods=["GET"])
def who_am_i(ctx: RequestContext):
    from chalicelib.identity.caller import describe

    return describe(ctx.principal)


# -- Sessions ----------------------------------------------------------------------------


@api.route("/setup/{sessionId}", methods=["POST"], access=Access.SETUP)
def setup_session(ctx: RequestContext, sessionId: str):
    user_id = ctx.user_id_or_caller(ctx.request.query("userId"))
    with tracing.span("setup", {"session.id": sessionId}):
        return ctx.services.sessions.setup(sessionId, user_id, ctx.websocket_base())


@api.route("/sandbox/{sessionId}", methods=["DELETE"])
def destroy_sandbox(ctx: RequestContext, sessionId: str):
    return ctx.services.sessions.destroy(sessionId)


# -- Workspace files ---------------------------------------------------------------------


@api.route("/sessions/{sessionId}/files", methods=["GET"])
def list_workspace_files(ctx: RequestContext, sessionId: str):
    return ctx.services.workspace_files.list(sessionId, ctx.request.query("snapshot"))


@api.route("/sessions/{sessionId}/files/content", methods=["GET"])
def download_workspace_file(ctx: RequestContext, sessionId: str):
    found = ctx.services.workspace_files.read(sessionId, ctx.request.query("path"), ctx.request.query("snapshot"))
    return file_response(ctx.request, found.data, found.content_type, found.path.rsplit("/", 1)[-1], app.api.binary_types)


@api.route("/sessions/{sessionId}/files/content", methods=["PUT"])
def upload_workspace_file(ctx: RequestContext, sessionId: str):
    body = ctx.request.raw_bytes(max_bytes=ctx.settings.workspace.upload_bytes, what="The file", setting="WORKSPACE_UPLOAD_MB")
    return ctx.services.workspace_files.write(sessionId, ctx.request.query("path"), body)


@api.route("/sessions/{sessionId}/files/content", methods=["DELETE"])
def delete_workspace_file(ctx: RequestContext, sessionId: str):
    return ctx.services.workspace_files.delete(sessionId, ctx.request.query("path"), ctx.request.query("snapshot"))


# -- The agent over WebSocket ------------------------------------------------------------

app.websocket_api.session = aws_session()


@app.on_ws_connect()
def ws_connect(event):
    return websocket.connect(event, app.websocket_api)


@app.on_ws_message()
def ws_message(event):
    websocket.message(event, app.websocket_api)


@app.on_ws_disconnect()
def ws_disconnect(event):
    websocket.disconnect(event)


@app.lambda_function(name="turn_runner")
def turn_runner(event, context):
    return websocket.run_turns(event, context, app.websocket_api)


@app.schedule(Rate(1, unit=Rate.MINUTES), name="socketio_ping")
def socketio_ping(event):
    return websocket.ping_socketio_clients(app.websocket_api)


# The turn runner's on-failure destination; the stack (merge template) points it at its own queue.
@app.on_sqs_message(queue="claude-agent-turn-failures", batch_size=1)
def turn_failures(event):
    return websocket.turn_failures(event, app.websocket_api)


json_logs.configure()  # inside Lambda (or LOG_FORMAT=json): one JSON object per log line, with its ids
cold_start.finish()  # inside Lambda: the storage client, built at init (see chalicelib/cold_start.py)
