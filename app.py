"""The Claude agent backend: every route and websocket handler, each delegating to chalicelib.

Read this file as the table of contents: REST routes first (user data, then sessions), then
the WebSocket handlers and the turn runner.
"""

from chalice import Chalice

from chalicelib.services.health import check_health
from chalicelib.web.routing import Api, RequestContext

app = Chalice(app_name="claude-agent-backend")
app.experimental_feature_flags.update(["WEBSOCKETS"])
api = Api(app)


# -- Health ------------------------------------------------------------------------------


@api.route("/health", methods=["GET"], public=True)
def health(ctx: RequestContext):
    return check_health(ctx.settings, ctx.services.store.backend_name, "none")
