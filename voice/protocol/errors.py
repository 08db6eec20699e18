"""The one exception the protocol layer raises; the session turns it into an `error` event."""

from __future__ import annotations


class ProtocolError(Exception):
    """Input the protocol cannot accept, with OpenAI's error code and the offending parameter."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.type = type
