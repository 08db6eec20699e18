"""`POST /v1/realtime/calls` (an SDP offer in, the answer out) and `POST /v1/realtime/client_secrets`.

The wire is OpenAI's (docs/webrtc.md): the offer as `application/sdp` (what @openai/agents-realtime's
OpenAIRealtimeWebRTC posts) or as `multipart/form-data` with `sdp` and an optional `session` (the
openai SDKs' `realtime.calls.create`); `Authorization: Bearer` an API key or an ephemeral `ek_`
key; the answer as `201 application/sdp` with `Location: /v1/realtime/calls/{call_id}`. Errors are
JSON in OpenAI's shape, before any answer: a bad body 400, a bad key 401, no capacity 429/503.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ..asr import get_backend
from ..auth import RealtimeOriginValidator, allowed_hosts, authenticate, open_endpoint, presented_key
from ..companion import get_companion
from ..conf import get_config
from ..engine import DEFAULT_MODEL_TYPE
from ..engine.manager import get_manager
from ..protocol import Dialect
from ..runtime.admission import open_session
from ..runtime.fronts import RealtimeFront
from ..runtime.session import Handshake
from . import secrets
from .call import WebRTCCall
from .call import calls as live_calls

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024  # a browser's offer is 2-6 KiB
MAX_SESSION_BYTES = 256 * 1024  # the session configuration of a multipart call or a client secret

# What a refusal of the runtime's admission (voice/runtime/admission.py) is over HTTP.
REFUSAL_STATUS = {
    "invalid_api_key": 401,
    "too_many_sessions": 429,
    "server_busy": 503,
    "model_unavailable": 503,
    "server_shutting_down": 503,
    "invalid_model": 400,
}


def _browser_origin_allowed(origin: str) -> bool:
    """The WebSocket's rule (voice/auth.py): ALLOWED_HOSTS or REALTIME_ALLOWED_ORIGINS."""
    allowed = allowed_hosts() + list(get_config()["ALLOWED_ORIGINS"])
    return RealtimeOriginValidator(None, allowed).valid_origin(urlparse(origin))


def cors(view: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    """CORS for a browser page on another allowed origin: its preflight (the SDK sends Authorization
    and an SDP content type) is answered, and the answer's Location is readable (the call id)."""

    @functools.wraps(view)
    async def wrapped(request: HttpRequest) -> HttpResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and _browser_origin_allowed(origin)
        if request.method == "OPTIONS":
            response = HttpResponse(status=204 if allowed else 403)
        else:
            response = await view(request)
        if allowed:
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-OpenAI-Agents-SDK, OpenAI-Beta"
            response["Access-Control-Expose-Headers"] = "Location"
            response["Access-Control-Max-Age"] = "600"
            response["Vary"] = "Origin"
        return response

    return wrapped


def _error(
    status: int, code: str | None, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> JsonResponse:
    return JsonResponse({"error": {"message": message, "type": kind, "code": code, "param": param}}, status=status)


def _bad_key() -> JsonResponse:
    return _error(401, "invalid_api_key", "Incorrect or missing API key.")


def _headers(request: HttpRequest) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def _front() -> RealtimeFront:
    return RealtimeFront(Dialect.GA, companion=get_companion().enabled, transcribe=get_backend().enabled)


def _model_name(model_type: str) -> str:
    manager = get_manager()
    try:
        return manager.model_names().get(model_type, "") if manager is not None else ""
    except Exception:  # noqa: BLE001 - only a name for the answer
        return ""


def check_session(session: Any) -> tuple[dict[str, Any] | None, JsonResponse | None]:
    """The session configuration as session.updated would show it, or the error it causes.

    Applied to a throwaway protocol session (no model, no slot), with the very checks a
    `session.update` gets on the WebSocket.
    """
    if not isinstance(session, dict):
        return None, _error(400, "invalid_value", "'session' must be an object.", "session")
    protocol = _front().new_session(_model_name(DEFAULT_MODEL_TYPE), get_config())
    protocol.start()
    effects = protocol.receive(json.dumps({"type": "session.update", "session": session}))
    for event in effects.events:
        if event["type"] == "error":
            error = event["error"]
            param = f"session.{error['param']}".replace("session.session.", "session.") if error.get("param") else None
            return None, _error(400, error.get("code"), error["message"], param)
        if event["type"] == "session.updated":
            return event["session"], None
    return None, _error(400, "invalid_value", "The session configuration was not accepted.", "session")


# --- POST /v1/realtime/client_secrets ------------------------------------------------------------


@csrf_exempt
@cors
async def client_secrets(request: HttpRequest) -> HttpResponse:
    """Mint an ephemeral key for a browser: `{session?, expires_after?}` -> `{value, expires_at, session}`."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", "POST /v1/realtime/client_secrets creates a client secret.")
    key = presented_key(_headers(request), [])
    api_key = None if secrets.is_client_secret(key) else await authenticate(key)
    if api_key is None and not open_endpoint():
        return _bad_key()  # an ephemeral key cannot mint another
    if len(request.body) > MAX_SESSION_BYTES:
        return _error(413, "request_too_large", f"The body is larger than {MAX_SESSION_BYTES} bytes.")
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return _error(400, "invalid_json", "The body is not valid JSON.")
    if not isinstance(body, dict):
        return _error(400, "invalid_value", "The body must be a JSON object.")
    unknown = sorted(set(body) - {"session", "expires_after"})
    if unknown:
        return _error(400, "unknown_parameter", f"Unknown parameter: '{unknown[0][:64]}'.", unknown[0][:64])
    seconds = secrets.DEFAULT_SECONDS
    expires_after = body.get("expires_after")
    if expires_after is not None:
        if not isinstance(expires_after, dict) or expires_after.get("anchor", "created_at") != "created_at":
            return _error(400, "invalid_value", "expires_after.anchor must be 'created_at'.", "expires_after.anchor")
        seconds = expires_after.get("seconds", secrets.DEFAULT_SECONDS)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int)
            or not (secrets.MIN_SECONDS <= seconds <= secrets.MAX_SECONDS)
        ):
            return _error(
                400,
                "invalid_value",
                f"expires_after.seconds must be an integer from {secrets.MIN_SECONDS} to {secrets.MAX_SECONDS}.",
                "expires_after.seconds",
            )
    session = body.get("session", {"type": "realtime"})
    shown, error = check_session(session)
    if error is not None:
        return error
    value, expires_at = await secrets.mint(api_key["id"] if api_key else None, session, seconds)
    return JsonResponse({"value": value, "expires_at": expires_at, "session": shown})


# --- POST /v1/realtime/calls ---------------------------------------------------------------------


def _read_offer(request: HttpRequest) -> tuple[str, dict[str, Any] | None, JsonResponse | None]:
    """The SDP offer and the optional session configuration, from either body the clients send."""
    content_type = request.content_type or ""
    if content_type == "multipart/form-data":

        def part(name: str) -> str | None:
            if name in request.FILES:
                return request.FILES[name].read(MAX_SESSION_BYTES + 1).decode("utf-8", "replace")
            return request.POST.get(name)

        sdp, session_text = part("sdp"), part("session")
        if not sdp:
            return "", None, _error(400, "missing_required_parameter", "Missing required parameter: 'sdp'.", "sdp")
        session = None
        if session_text:
            try:
                session = json.loads(session_text)
            except ValueError:
                return "", None, _error(400, "invalid_json", "'session' is not valid JSON.", "session")
        return sdp, session, None
    if content_type in ("application/sdp", "text/plain", ""):
        return request.body.decode("utf-8", "replace"), None, None
    return (
        "",
        None,
        _error(400, "invalid_content_type", "Send the offer as application/sdp or multipart/form-data (sdp, session)."),
    )


@csrf_exempt
@cors
async def calls(request: HttpRequest) -> HttpResponse:
    """A WebRTC call: admit the session, answer the offer; the session runs until the peer leaves."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", "POST an SDP offer to /v1/realtime/calls.")
    length = request.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_SDP_BYTES + MAX_SESSION_BYTES:
        return _error(413, "request_too_large", "The offer is too large.")
    headers = _headers(request)
    key = presented_key(headers, [])
    config: dict[str, Any] = {}
    api_key: dict[str, Any] | None = None
    if secrets.is_client_secret(key):
        resolved = await secrets.resolve(key)
        if resolved is None or (resolved.api_key is None and not open_endpoint()):
            return _error(401, "invalid_api_key", "The ephemeral key is unknown or has expired.")
        api_key, config = resolved.api_key, resolved.session
    else:
        api_key = await authenticate(key)
        if api_key is None and not open_endpoint():
            return _bad_key()
    sdp, call_session, error = _read_offer(request)
    if error is not None:
        return error
    if len(sdp.encode()) > MAX_SDP_BYTES:
        return _error(413, "request_too_large", f"The SDP offer is larger than {MAX_SDP_BYTES} bytes.", "sdp")
    if not sdp.lstrip().startswith("v=0"):
        return _error(400, "invalid_sdp", "The body is not an SDP offer.", "sdp")
    if call_session is not None:
        if not isinstance(call_session, dict):
            return _error(400, "invalid_value", "'session' must be an object.", "session")
        config = {**config, **call_session}

    # The session outlives this request: it runs in a context of its own, not the request's (whose
    # thread-sensitive executor, through which the database is reached, ends with the response).
    # Shielded: a client that leaves mid-request cancels this view, not the call's setup, whose
    # own paths (a refusal, or a peer that never connects) release what it took.
    start = _start_call(sdp, config, key, api_key, request.GET.get("model_type", DEFAULT_MODEL_TYPE), _client(request))
    task = asyncio.get_running_loop().create_task(start, context=contextvars.Context())
    _starting.add(task)
    task.add_done_callback(_starting.discard)
    return await asyncio.shield(task)


_starting: set[asyncio.Task[HttpResponse]] = set()  # calls being set up (a reference keeps each alive)


def _client(request: HttpRequest) -> str:
    client = request.META.get("REMOTE_ADDR", "")
    return f"{client}:{request.META.get('REMOTE_PORT', 0)}" if client else ""


async def _start_call(
    sdp: str, config: dict[str, Any], key: str | None, api_key: dict[str, Any] | None, model_type: str, client: str
) -> HttpResponse:
    """Check the offer, admit the session, apply its configuration, answer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only: no STUN lookups
    call = WebRTCCall(pc)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # noqa: BLE001 - whatever aiortc makes of a bad offer
        await pc.close()
        return _error(400, "invalid_sdp", f"The SDP offer was not accepted: {str(exc)[:200]}", "sdp")
    pc.addTrack(call.output)

    layer = get_channel_layer()
    try:
        channel_name = await layer.new_channel("webrtc.") if layer is not None else ""
        handshake = Handshake(
            front=_front(),
            presented_key=key,
            model_type=model_type,
            requested_model=str(config.get("model", ""))[:200],
            client_address=client,
        )
        runtime = await open_session(handshake, call, layer, channel_name, authenticated=api_key)
    except BaseException:  # admission itself failed (the database, a bug): the peer connection goes
        await call.finish("admission_failed")
        raise
    if runtime is None:
        await call.finish("refused")
        return _refusal(call.pending_events())
    call.attach(runtime, layer, channel_name)
    try:
        if config:
            problem = await call.configure(config)
            if problem is not None:
                await runtime.end("webrtc:invalid_session")
                return _error(400, problem.get("code"), problem["message"], "session")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception:
        log.exception("call %s: could not answer the offer", call.call_id)
        await call.finish("answer_failed")
        return _error(500, "server_error", "The server could not answer the offer.", kind="server_error")
    log.info("call %s: session %s answered", call.call_id, runtime.session_id)
    response = HttpResponse(pc.localDescription.sdp, status=201, content_type="application/sdp")
    response["Location"] = f"/v1/realtime/calls/{call.call_id}"
    return response


def _refusal(events: list[dict[str, Any]]) -> JsonResponse:
    for event in events:
        if event.get("type") == "error":
            error = event["error"]
            status = REFUSAL_STATUS.get(error.get("code"), 500)
            return _error(status, error.get("code"), error.get("message", ""), error.get("param"), error.get("type"))
    return _error(500, "server_error", "The session could not be started.", kind="server_error")


# --- POST /v1/realtime/calls/{call_id}/hangup ----------------------------------------------------


@csrf_exempt
async def hangup(request: HttpRequest, call_id: str) -> HttpResponse:
    """End a call from the server side (the SDKs' `realtime.calls.hangup`), with the key that opened it."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", "POST /v1/realtime/calls/{call_id}/hangup ends a call.")
    key = presented_key(_headers(request), [])
    api_key = await authenticate(key)
    if api_key is None and not open_endpoint():
        return _bad_key()
    call = live_calls.get(call_id)
    runtime = call.runtime if call is not None else None
    if runtime is None or (api_key is not None and runtime.api_key_id != api_key["id"] and not open_endpoint()):
        return _error(404, "call_not_found", f"No live call '{call_id[:64]}' here.", "call_id")
    await runtime.end("hangup")
    return HttpResponse(status=200)
