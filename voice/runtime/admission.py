"""Admission: who may open a session, and on what. A refusal is an `error` event and a close,
before any session state exists; an admitted session gets a slot and a started SessionRuntime.

Kept apart from the runtime itself: a second front end (the Live API) admits its sessions the same
way with its own handshake, and a reader looking for "why was I refused" finds every reason here.
"""

from __future__ import annotations

import json
from typing import Any

from .. import loop_monitor, metrics
from ..auth import authenticate, open_endpoint
from ..conf import get_config
from ..engine.manager import get_manager
from ..engine.remote import EngineUnavailable
from ..protocol.errors import ProtocolError
from .live import live_sessions
from .session import END_SERVER_ERROR, INTERNAL_ERROR_MESSAGE, Handshake, SessionRuntime
from .transport import CLOSE_AUTH, CLOSE_POLICY, CLOSE_SERVER_ERROR, CLOSE_TRY_AGAIN, Transport

# The engine process does not answer (starting, restarting): a refusal the client may retry.
ENGINE_AWAY = (
    "model_unavailable",
    "The model engine is not running (starting or restarting); try again shortly.",
    CLOSE_TRY_AGAIN,
    "server_error",
)


async def open_session(
    handshake: Handshake,
    transport: Transport,
    channel_layer: Any,
    channel_name: str,
    *,
    authenticated: dict[str, Any] | None = None,
) -> SessionRuntime | None:
    """Admit the session (key, capacity, model type) and start it; None when it was refused.

    A refusal is an `error` event and a close, before any session state exists. ``authenticated``
    is an API key the front end has already checked (a WebRTC call's ephemeral client secret stands
    for the key it was minted from, voice/webrtc/secrets.py); otherwise the handshake's key is.
    """

    async def refuse(code: str, message: str, close_code: int, error_type: str, param: str | None = None) -> None:
        metrics.SESSIONS_REFUSED.labels(code).inc()
        error = ProtocolError(code, message, param=param, type=error_type)
        await transport.send_text(json.dumps(handshake.front.error_event(error)))
        await transport.close(close_code, f"{error_type}.{code}"[:120])

    loop_monitor.watch_running_loop()
    live_sessions.hook_server_shutdown()
    api_key = authenticated if authenticated is not None else await authenticate(handshake.presented_key)
    if api_key is None and not open_endpoint():
        # The same answer for a missing, wrong or revoked key.
        await refuse("invalid_api_key", "Incorrect or missing API key.", CLOSE_AUTH, "invalid_request_error")
        return None
    if live_sessions.draining:
        await refuse(
            "server_shutting_down", "This server is shutting down; connect again.", CLOSE_TRY_AGAIN, "server_error"
        )
        return None
    manager = get_manager()
    if manager is None:
        await refuse("server_error", "The model is not loaded in this process.", CLOSE_SERVER_ERROR, "server_error")
        return None
    status = await manager.fresh_status()
    if status is None or not status.get("ready"):
        await refuse(*ENGINE_AWAY)
        return None
    if handshake.model_type not in status["models"]:
        loaded = ", ".join(sorted(status["models"]))
        await refuse(
            "invalid_model",
            f"Model type '{handshake.model_type[:64]}' is not loaded here; loaded: {loaded}.",
            CLOSE_POLICY,
            "invalid_request_error",
            param="model_type",
        )
        return None
    config = get_config()
    per_key = config["MAX_SESSIONS_PER_KEY"]
    if live_sessions.key_full(api_key["id"] if api_key else None, per_key):
        await refuse(
            "too_many_sessions",
            f"This API key already holds {per_key} live sessions (REALTIME_MAX_SESSIONS_PER_KEY); end one first.",
            CLOSE_TRY_AGAIN,
            "invalid_request_error",
        )
        return None
    try:
        slot = await manager.open_slot(handshake.model_type, paced=handshake.front.paced)
    except EngineUnavailable:
        await refuse(*ENGINE_AWAY)
        return None
    if slot is None:
        await refuse(
            "server_busy",
            "Every session slot of this server is in use; try again later.",
            CLOSE_TRY_AGAIN,
            "server_error",
        )
        return None
    try:
        runtime = SessionRuntime(
            handshake=handshake,
            api_key=api_key,
            slot=slot,
            model_name=status["models"][handshake.model_type]["name"],
            transport=transport,
            channel_layer=channel_layer,
            channel_name=channel_name,
            config=config,
        )
    except BaseException:  # a session that could not even be built gives its slot back
        slot.release()
        raise
    try:
        await runtime.start()
    except BaseException:
        await runtime.end(END_SERVER_ERROR, ProtocolError("server_error", INTERNAL_ERROR_MESSAGE, type="server_error"))
        raise
    return runtime
