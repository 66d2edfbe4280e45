import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cortex_site.settings")

from orchestrator.handler import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (Django must be set up first)

from orchestrator.admission import Admission  # noqa: E402
from orchestrator.auth import TokenOrSessionAuth  # noqa: E402
from orchestrator.mcp.server import WithMcp  # noqa: E402
from orchestrator.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    # /mcp (Cortex as an MCP server) apart from admission: its sessions are long-lived streams.
    "http": WithMcp(Admission(django_asgi_app)),
    "websocket": TokenOrSessionAuth(URLRouter(websocket_urlpatterns)),
})
