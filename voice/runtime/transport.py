"""The connection a session runtime talks through: send text, close, and how much is still unsent.

ASGI gives an application no write backpressure: `send` returns at once and the server buffers
whatever the client has not read yet. daphne hands each connection a `send` that is
``functools.partial(server.handle_reply, protocol)``, and the protocol's Twisted transport knows
how many bytes are still waiting for the socket. `link_transport` (an ASGI middleware, outermost in
asgi.py) puts that protocol into the scope so that a session can bound what a client that stopped
reading makes the server hold, and can send the close codes autobahn's public API refuses (it
takes only 1000 and 3000-4999; daphne itself sends 1011 through `sendCloseFrame`). Under another
ASGI server, or in tests through Channels' communicator, there is no link: unsent bytes are
unknown and the refused codes fall back to their twins in the private range (1001 -> 4001).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

SCOPE_KEY = "voice.transport_link"

# Close codes: 1000 ends an SDK client's `async for` quietly; any other makes it raise.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_POLICY = 4000
CLOSE_AUTH = 3000  # what OpenAI sends for a bad key (reason invalid_request_error.invalid_api_key)
CLOSE_SERVER_ERROR = 4011  # 1011 in the private range
CLOSE_TRY_AGAIN = 4013  # 1013 in the private range


def private_twin(code: int) -> int:
    """The code autobahn accepts for a standard one it refuses: 1001 -> 4001."""
    return code if code == CLOSE_NORMAL or 3000 <= code <= 4999 else 4000 + code % 1000


class Transport(Protocol):
    """What a session runtime needs of its connection; a WebSocket consumer is one."""

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...

    def unsent_bytes(self) -> int | None:
        """Bytes handed to the server for this client and not yet written to its socket; None: unknown."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, discarding what is unsent (a client that does not read)."""
        ...


class DaphneLink:
    """daphne's protocol object for one connection, read through attributes that may move.

    Every access is guarded: a daphne or Twisted that changed shape makes the link answer
    "unknown", never fail a session.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    @classmethod
    def from_send(cls, send: Callable[..., Awaitable[None]]) -> DaphneLink | None:
        if isinstance(send, functools.partial) and send.args and hasattr(send.args[0], "transport"):
            return cls(send.args[0])
        return None

    def unsent_bytes(self) -> int | None:
        transport = getattr(self.protocol, "transport", None)
        try:
            return len(transport.dataBuffer) - int(transport.offset) + int(transport._tempDataLen)
        except (AttributeError, TypeError):
            return None

    def close_frame(self, code: int, reason: str = "") -> bool:
        """Send a close frame with any code; False when the protocol cannot."""
        try:
            self.protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:120] or None, isReply=False)
        except Exception:  # noqa: BLE001 - fall back to the ASGI close
            log.debug("close frame %d through daphne failed", code, exc_info=True)
            return False
        return True

    def abort(self) -> None:
        transport = getattr(self.protocol, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()


def link_transport(application: Any) -> Callable[..., Awaitable[None]]:
    """ASGI middleware: put the daphne link of each WebSocket connection into its scope."""

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") == "websocket":
            scope = {**scope, SCOPE_KEY: DaphneLink.from_send(send)}
        await application(scope, receive, send)

    return app
