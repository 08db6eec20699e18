"""Plain HTTP views of the voice app."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .engine.manager import get_manager


def healthz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 once the model is loaded and warm, 503 before (or in a process without one)."""
    manager = get_manager()
    if manager is None or not manager.ready:
        return JsonResponse({"ready": False}, status=503)
    models = {kind: engine.model.name for kind, engine in manager.engines.items()}
    return JsonResponse({"ready": True, "device": str(manager.device), "models": models})
