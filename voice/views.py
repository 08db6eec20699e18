"""Plain HTTP views of the voice app."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .conf import get_config
from .engine.manager import get_manager
from .runtime.live import live_sessions


def healthz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 once the model is loaded and warm, 503 before (or in a process without one)
    and once the process is shutting down, so that a load balancer sends no new calls here."""
    manager = get_manager()
    if manager is None or not manager.ready:
        return JsonResponse({"ready": False}, status=503)
    if live_sessions.draining:
        return JsonResponse({"ready": False, "shutting_down": True}, status=503)
    models = {kind: engine.model.name for kind, engine in manager.engines.items()}
    return JsonResponse({"ready": True, "device": str(manager.device), "models": models})


def index(request: HttpRequest) -> HttpResponse:
    """A landing page that says where the endpoint is and links to the admin."""
    manager = get_manager()
    ready = manager is not None and manager.ready
    models = [engine.model.name for engine in manager.engines.values()] if ready else []
    return render(request, "index.html", {"ready": ready, "models": models})


def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics in the Prometheus text format, for a scraper that holds the token.

    REALTIME_METRICS_TOKEN set: `Authorization: Bearer <token>` is required (401 otherwise). Not set:
    403 with a word on what to set, except under DEBUG, where /metrics stays open for local use.
    """
    token = get_config()["METRICS_TOKEN"]
    if not token:
        if not settings.DEBUG:
            return HttpResponse(
                "/metrics is closed: set REALTIME_METRICS_TOKEN and scrape with `Authorization: Bearer <token>`.\n",
                status=403,
                content_type="text/plain; charset=utf-8",
            )
    elif not bearer_matches(request.headers.get("Authorization", ""), token):
        response = HttpResponse(
            "/metrics needs `Authorization: Bearer <REALTIME_METRICS_TOKEN>`.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response

    from . import metrics  # noqa: F401 - registers the collectors

    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def bearer_matches(authorization: str, token: str) -> bool:
    """`Bearer <token>`, compared in constant time."""
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())
