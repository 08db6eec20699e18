"""ASGI entry point: `daphne realtime_project.asgi:application`.

Django is set up first (get_asgi_application), which runs VoiceConfig.ready() and so loads the
model before the first connection is accepted; only then is the WebSocket routing imported.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from voice.auth import host_checked, origin_checked  # noqa: E402
from voice.routing import websocket_urlpatterns  # noqa: E402
from voice.runtime.transport import link_transport  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The Host against ALLOWED_HOSTS first, as for HTTP; then browser origins (the Realtime
        # endpoint's list; the console checks its own); the Django session (staff console) next;
        # API keys in the consumer. Every refusal closes before accept: daphne answers HTTP 403.
        # link_transport lets a session see daphne's send buffer (voice/runtime/transport.py).
        "websocket": link_transport(
            host_checked(origin_checked(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))))
        ),
    }
)
