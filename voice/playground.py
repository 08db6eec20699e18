"""The playground: a page to talk to the server from a browser, over any of its three transports.

Realtime over WebRTC (POST /v1/realtime/calls), Realtime over WebSocket (/v1/realtime) and the Live
API over WebSocket (/v1/live/sessions). The page is a shell: voice/static/voice/playground.js does
the talking, with the key the visitor types in (browsers pass it as the subprotocol
`openai-insecure-api-key.<key>`, or as `Authorization: Bearer` to the WebRTC endpoint). No key is
ever written into the page. Anyone may load it: it holds nothing secret, and every session it opens
goes through the endpoints' own key checks.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .auth import open_endpoint
from .engine.demo_checkpoint import DEMO_NAME
from .engine.manager import get_manager
from .live.config import LIVE_MODELS


def playground(request: HttpRequest) -> HttpResponse:
    """The page: which models are loaded (and whether the voice is the demo's noise), the Live model
    names a session may ask for, and whether this visitor is staff (links to the console and to
    the admin's API keys)."""
    manager = get_manager()
    ready = manager is not None and manager.ready
    models: dict[str, str] = dict(manager.model_names()) if ready else {}
    user = request.user
    context = {
        "ready": ready,
        "models": sorted(models.values()),
        "demo": DEMO_NAME in models.values(),
        "demo_name": DEMO_NAME,
        # Live names the model in session.start: OpenAI's names, then this server's own checkpoints.
        "live_models": [*LIVE_MODELS, *sorted(name for name in models.values() if name not in LIVE_MODELS)],
        "open_endpoint": open_endpoint(),
        "staff": bool(user.is_authenticated and user.is_active and user.is_staff),
    }
    return render(request, "playground.html", context)
