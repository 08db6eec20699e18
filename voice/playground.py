"""The playground: a page to talk to the server from a browser, over any of its three transports.

Realtime over WebRTC (POST /v1/realtime/calls), Realtime over WebSocket (/v1/realtime) and the Live
API over WebSocket (/v1/live/sessions). The page is a shell: voice/static/voice/playground.js does
the talking, with the key the visitor types in (browsers pass it as the subprotocol
`openai-insecure-api-key.<key>`, or as `Authorization: Bearer` to the WebRTC endpoint). No key is
ever written into the page. Anyone may load it: it holds nothing secret, and every session it opens
goes through the endpoints' own key checks.

Staff members may ask for a short-lived client secret (`ek_...`, as POST /v1/realtime/client_secrets
mints them) with their signed-in session instead of pasting a key. It opens WebRTC calls only, for
DEFAULT_SECONDS, and stands for an API key of their own named "playground: <username>", made on
first use with a value nobody ever sees: the admin lists it, stored conversations name it, and
revoking it there ends every secret minted from it.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_POST

from .auth import open_endpoint
from .engine.demo_checkpoint import DEMO_NAME
from .engine.manager import get_manager
from .live.config import LIVE_MODELS
from .models import ApiKey, ClientSecret
from .webrtc.secrets import DEFAULT_SECONDS

PLAYGROUND_KEY_PREFIX = "playground: "


def is_staff(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def playground(request: HttpRequest) -> HttpResponse:
    """The page: which models are loaded (and whether the voice is the demo's noise), the Live model
    names a session may ask for, and whether this visitor is staff (a key minted for them, links to
    the console and to the admin's API keys)."""
    manager = get_manager()
    ready = manager is not None and manager.ready
    models: dict[str, str] = dict(manager.model_names()) if ready else {}
    context = {
        "ready": ready,
        "models": sorted(models.values()),
        "demo": DEMO_NAME in models.values(),
        "demo_name": DEMO_NAME,
        # Live names the model in session.start: OpenAI's names, then this server's own checkpoints.
        "live_models": [*LIVE_MODELS, *sorted(name for name in models.values() if name not in LIVE_MODELS)],
        "open_endpoint": open_endpoint(),
        "staff": is_staff(request),
        "secret_minutes": DEFAULT_SECONDS // 60,
    }
    return render(request, "playground.html", context)


@require_POST
@login_required(login_url="admin:login")
def mint_secret(request: HttpRequest) -> JsonResponse:
    """A client secret for the signed-in staff member: `{value, expires_at}` (Unix seconds).

    POST only, so the CSRF check applies: another site cannot mint one with a staff cookie.
    """
    if not is_staff(request):
        raise PermissionDenied("Minting a key from the playground is for staff members.")
    name = f"{PLAYGROUND_KEY_PREFIX}{request.user.get_username()}"[: ApiKey._meta.get_field("name").max_length]
    expires_at = (timezone.now() + dt.timedelta(seconds=DEFAULT_SECONDS)).replace(microsecond=0)
    with transaction.atomic():
        parent = ApiKey.objects.active().filter(name=name, created_by=request.user).first()
        if parent is None:
            parent, _unused = ApiKey.issue(name=name, created_by=request.user)  # its value is never shown
        _secret, value = ClientSecret.mint(api_key_id=parent.pk, session={"type": "realtime"}, expires_at=expires_at)
    response = JsonResponse({"value": value, "expires_at": int(expires_at.timestamp()), "api_key": parent.name})
    response["Cache-Control"] = "no-store"
    return response
