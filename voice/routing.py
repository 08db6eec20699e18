"""WebSocket routes: the Realtime endpoint, the staff console, and a clean refusal for any other path.

Without the catch-all, Channels' router raises for an unknown path and daphne answers the upgrade
with a 500 and a traceback; a client that got the URL wrong (e.g. `ws://host/v1` used verbatim)
deserves a plain refusal instead.
"""

from django.urls import re_path

from .console.consumers import ConsoleConsumer
from .consumers import LiveConsumer, RealtimeConsumer, UnknownPathConsumer

websocket_urlpatterns = [
    re_path(r"^v1/realtime/?$", RealtimeConsumer.as_asgi()),
    re_path(r"^v1/live/sessions/?$", LiveConsumer.as_asgi()),  # OpenAI's Live API
    re_path(r"^console/live/?$", ConsoleConsumer.as_asgi()),  # staff console; before the catch-all
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
