"""Plain HTTP views of the voice app."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .conf import get_config
from .engine import DEFAULT_MODEL_TYPE
from .engine.manager import get_manager
from .runtime.live import live_sessions


def healthz(request: HttpRequest) -> JsonResponse:
    """Health: 200 once the model is loaded and warm and its engine answers, 503 before (or in a
    process without one) and once the process is shutting down."""
    return _readiness(need_free_slot=False)


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness for a load balancer: as /healthz, and 503 while every slot of the default model
    type is taken, so that new calls go to a server that can take them."""
    return _readiness(need_free_slot=True)


def _readiness(*, need_free_slot: bool) -> JsonResponse:
    manager = get_manager()
    status = manager.status(max_age=0.0) if manager is not None else None  # a load balancer wants it current
    if status is None or not status.get("ready"):
        return JsonResponse({"ready": False}, status=503)
    if live_sessions.draining:
        return JsonResponse({"ready": False, "shutting_down": True}, status=503)
    models = status["models"]
    body = {
        "ready": True,
        "device": status["device"],
        "models": {kind: info["name"] for kind, info in models.items()},
        "slots": {
            kind: {"total": info["slots"], "free": info["slots"] - info["in_use"]} for kind, info in models.items()
        },
    }
    default = models.get(DEFAULT_MODEL_TYPE)
    if need_free_slot and default is not None and default["in_use"] >= default["slots"]:
        return JsonResponse({**body, "ready": False, "full": True}, status=503)
    return JsonResponse(body)


def index(request: HttpRequest) -> HttpResponse:
    """A landing page that says where the endpoint is and links to the admin."""
    manager = get_manager()
    ready = manager is not None and manager.ready
    models = list(manager.model_names().values()) if ready else []
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
