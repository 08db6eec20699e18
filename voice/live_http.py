"""The Live API's HTTP resources this server does not serve, answered as the API answers errors.

`POST /v1/live/sessions` starts a WebRTC session and `/v1/live/sessions/{id}/...` forks, accepts,
rejects, refers or hangs up SIP calls and downloads recordings: none of these exist here (the
Live API is served over its WebSocket only). A client that tries one gets a JSON
`{"error": {...}}` body with 501, never an HTML page or a hang, so an SDK raises a clear
`APIStatusError` naming what is missing.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

# The per-session actions of the API (SIP calls, forks, recordings), by the method each takes.
SESSION_ACTIONS = {
    "fork": "POST",
    "accept": "POST",
    "reject": "POST",
    "refer": "POST",
    "hangup": "POST",
    "content": "GET",
}


def _error(status: int, code: str, message: str, param: str | None = None) -> JsonResponse:
    body = {"error": {"type": "invalid_request_error", "code": code, "message": message, "param": param}}
    return JsonResponse(body, status=status)


@csrf_exempt
def sessions(request: HttpRequest) -> JsonResponse:
    """`POST /v1/live/sessions`: a WebRTC session, which this server does not offer (501)."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", "Use a WebSocket to /v1/live/sessions, or POST for WebRTC.")
    return _error(
        501,
        "unsupported_transport",
        "This server serves the Live API over its WebSocket only (ws://HOST/v1/live/sessions); WebRTC is not supported.",
        "transport",
    )


@csrf_exempt
def session_action(request: HttpRequest, session_id: str, action: str) -> JsonResponse:
    """`/v1/live/sessions/{id}/{fork,accept,reject,refer,hangup,content}`: not served (501)."""
    method = SESSION_ACTIONS.get(action)
    if method is None:
        return _error(404, "not_found", f"Unknown Live API resource '{action[:64]}'.")
    if request.method != method:
        return _error(405, "method_not_allowed", f"/v1/live/sessions/{{id}}/{action} takes {method}.")
    what = "Recordings are not stored" if action == "content" else "Forks and SIP calls are not supported"
    return _error(501, "unsupported_operation", f"{what} by this server.", None)
