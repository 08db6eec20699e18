"""RealtimeConsumer: the WebSocket at /v1/realtime. A thin adapter: handshake, JSON in, JSON out.

Everything a session owns, and its cleanup, lives in voice.runtime.SessionRuntime. This class
only reads the handshake, moves text between the socket and the runtime, and routes channel-layer
messages (the staff console, key revocation) to it. `dispatch` is the one error boundary for
every handler; `__call__` makes sure that a cancelled connection (daphne's shutdown on SIGTERM,
its close timeout) still ends the session properly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from .asr import get_backend
from .auth import presented_key
from .companion import get_companion
from .engine import DEFAULT_MODEL_TYPE
from .engine.manager import get_manager
from .protocol import Dialect
from .protocol.errors import ProtocolError
from .runtime.admission import open_session
from .runtime.fronts import Front, LiveFront, RealtimeFront
from .runtime.session import INTERNAL_ERROR_MESSAGE, Handshake, SessionRuntime
from .runtime.transport import CLOSE_SERVER_ERROR, CLOSE_TRY_AGAIN, SCOPE_KEY, DaphneLink, private_twin

log = logging.getLogger(__name__)


class RealtimeConsumer(AsyncWebsocketConsumer):
    runtime: SessionRuntime | None = None
    front: Front = RealtimeFront(Dialect.GA)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            if self.runtime is not None:
                await self.runtime.shutdown()
            raise
        finally:
            if self.runtime is not None:  # whatever ended the connection, the session ends too
                await self.runtime.teardown("connection_ended")

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Every handler runs here: an exception becomes an `error` event, not a dead connection."""
        try:
            await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception:
            if self.runtime is None:
                log.exception("realtime connection failed before its session started")
                await self._fail_without_session()
            else:
                await self.runtime.failed(f"handler:{message.get('type', '?')}")

    async def connect(self) -> None:
        """Accept, then let the runtime admit the session (key, capacity) and greet the client."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope.get("headers", [])}
        subprotocols: list[str] = self.scope.get("subprotocols", [])
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        manager = get_manager()
        if manager is not None:
            await manager.fresh_status()  # the model names the front maps (read from it, never fetched on the loop)
        self.front = self.choose_front(headers, subprotocols)
        client = self.scope.get("client") or ("", 0)
        handshake = Handshake(
            front=self.front,
            presented_key=presented_key(headers, subprotocols),
            model_type=query.get("model_type", [DEFAULT_MODEL_TYPE])[0],
            requested_model=query.get("model", [""])[0],
            client_address=f"{client[0]}:{client[1]}" if client[0] else "",
        )
        # Echo `realtime` only when offered: the Python SDK offers none and fails on an unasked one.
        await self.accept(subprotocol="realtime" if "realtime" in subprotocols else None)
        self.runtime = await open_session(handshake, self, self.channel_layer, self.channel_name)

    def choose_front(self, headers: dict[str, str], subprotocols: list[str]) -> Front:
        """The Realtime protocol, in the dialect the client asked for (beta: OpenAI-Beta realtime=v1)."""
        return RealtimeFront(
            Dialect.from_handshake(headers, subprotocols),
            companion=get_companion().enabled,
            transcribe=get_backend().enabled,
        )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.runtime is None:
            return
        if text_data is None:
            await self.runtime.receive_bytes()
        else:
            await self.runtime.receive_text(text_data)

    async def disconnect(self, code: int) -> None:
        if self.runtime is not None:
            await self.runtime.teardown(f"disconnect:{code}")

    # --- the Transport the runtime sends through ------------------------------------------------

    async def send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:  # type: ignore[override]
        """Close with any code: one autobahn refuses (1001, 1011, 1013) goes through daphne's own
        close frame when there is a link to it, else as its private-range twin."""
        if isinstance(code, int) and not isinstance(code, bool) and private_twin(code) != code:
            link = self._link()
            if link is not None and link.close_frame(code, reason or ""):
                return
            code = private_twin(code)
        await super().close(code=code, reason=reason)

    def unsent_bytes(self) -> int | None:
        link = self._link()
        return link.unsent_bytes() if link is not None else None

    def abort(self) -> None:
        link = self._link()
        if link is not None:
            link.abort()

    def _link(self) -> DaphneLink | None:
        link = self.scope.get(SCOPE_KEY)
        return link if isinstance(link, DaphneLink) else None

    async def _fail_without_session(self) -> None:
        error = ProtocolError("server_error", INTERNAL_ERROR_MESSAGE, type="server_error")
        try:
            await self.send_text(json.dumps(self.front.error_event(error)))
            await self.close(CLOSE_SERVER_ERROR)
        except Exception:  # noqa: BLE001 - nothing more can be done for this connection
            log.debug("could not report the failure to the client", exc_info=True)

    # --- channel-layer messages (the staff console, key revocation; from any process) -----------

    async def console_roll_call(self, message: dict[str, Any]) -> None:
        """A console opened and asks who is live: answer it alone, with this session's summary."""
        if self.runtime is not None:
            await self.runtime.console_reply(message["reply_to"], detail=False)

    async def console_watch(self, message: dict[str, Any]) -> None:
        """A console started following this session: send it the transcript so far."""
        if self.runtime is not None:
            await self.runtime.console_reply(message["reply_to"], detail=True)

    async def console_end_session(self, message: dict[str, Any]) -> None:
        if self.runtime is not None:
            await self.runtime.end_by_staff(message.get("user_id"), str(message.get("username", "")))

    async def session_key_revoked(self, message: dict[str, Any]) -> None:
        if self.runtime is not None:
            await self.runtime.key_revoked()


class LiveConsumer(RealtimeConsumer):
    """The WebSocket at /v1/live/sessions: OpenAI's Live API on the same runtime.

    The client sends nothing in the URL (the model comes with session.start), so the session holds
    a slot of the default model from the handshake on, and moves to another model's slot if its
    session.start names one (SessionRuntime._switch_model).
    """

    def choose_front(self, headers: dict[str, str], subprotocols: list[str]) -> Front:
        manager = get_manager()
        names = {name: kind for kind, name in manager.model_names().items()} if manager is not None else {}
        return LiveFront(server_models=names, transcribe=get_backend().enabled, companion=get_companion().enabled)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:  # type: ignore[override]
        """Live clients read the standard codes (1011 and 1013 ask them to reconnect): send those,
        not the private-range twins the Realtime endpoint documents."""
        if code in (CLOSE_SERVER_ERROR, CLOSE_TRY_AGAIN):
            code = int(code) - 3000
        await super().close(code, reason)


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: refuse the handshake (HTTP 403), log the path once."""

    async def connect(self) -> None:
        log.warning(
            "refused a WebSocket connection to unknown path %r (the endpoints are /v1/realtime and /v1/live/sessions)",
            self.scope["path"][:200],
        )
        await super().close()


__all__ = ["LiveConsumer", "RealtimeConsumer", "UnknownPathConsumer"]
