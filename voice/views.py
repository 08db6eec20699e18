"""Plain HTTP views of the voice app."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .engine.manager import get_manager


def healthz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 once the model is loaded and warm, 503 before (or in a process without one)."""
    manager = get_manager()
    if manager is None or not manager.ready:
        return JsonResponse({"ready": False}, status=503)
    models = {kind: engine.model.name for kind, engine in manager.engines.items()}
    return JsonResponse({"ready": True, "device": str(manager.device), "models": models})


def index(request: HttpRequest) -> HttpResponse:
    """A landing page that says where the endpoint is and links to the admin."""
    manager = get_manager()
    ready = manager is not None and manager.ready
    models = [engine.model.name for engine in manager.engines.values()] if ready else []
    return render(request, "index.html", {"ready": ready, "models": models})


def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics in the Prometheus text format."""
    from . import metrics  # noqa: F401 - registers the collectors

    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
