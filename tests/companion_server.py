"""A local HTTP server that speaks OpenAI's chat-completions API, for testing the companion for real.

POST /v1/chat/completions answers streamed (``stream: true``: server-sent ``data: {...}`` chunks in
the chat.completion.chunk format, a last chunk with the usage when ``stream_options.include_usage``,
then ``data: [DONE]``) or as one JSON chat.completion. What it answers is scripted by the test:

    with CompanionServer() as server:              # or the ``companion_server`` fixture
        server.script(
            Reply(text="It is sunny in Paris."),   # streamed in a few chunks
            Reply(tool_calls=[("get_weather", {"city": "Paris"})]),
            Reply(status=500),                     # an HTTP error (429, 401, ...)
            Reply(text="late", delay=5.0),         # slowly: nothing for 5 s
        )
        ... call it at server.base_url ...
        server.bodies                              # every request body received, in order

Scripted replies are used one per request, in order; then ``server.respond(body)`` (a callable the
test may set) decides, else ``server.default``. ``server.max_concurrent`` says how many requests
were ever in flight at once.

Other tests use it through the fixtures below (import them into the test module):

    from .companion_server import companion_server, companion_settings  # noqa: F401
    def test_x(companion_settings): ...    # VOICE points at a fresh server; companion_settings is it

"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from .local_http import LocalHTTPServer, QuietHandler

MODEL = "fake-companion"


@dataclass
class Reply:
    """One scripted answer.

    ``text`` is streamed in ``chunks`` pieces; each of ``tool_calls`` (name, arguments as a dict or
    JSON text) is streamed as a first delta with its id and name, then its arguments in ``chunks``
    pieces. ``with_ids=False`` leaves the tool call ids out (some servers do). ``status`` other than
    200 answers that HTTP error instead; ``delay`` waits that long before answering anything and
    ``chunk_delay`` between chunks. ``stream_error`` sends an error event in the middle of the stream.
    """

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    status: int = 200
    error_message: str = "scripted failure"
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunks: int = 3
    with_ids: bool = True
    usage: tuple[int, int] = (12, 7)  # prompt, completion tokens
    model: str = MODEL
    stream_error: bool = False


class CompanionServer(LocalHTTPServer):
    """The server, on a free port of 127.0.0.1, served by a thread; a context manager."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []  # every request body, in order
        self.headers: list[dict[str, str]] = []  # and its headers, names lower-cased
        self.replies: list[Reply] = []  # scripted, used first
        self.respond: Callable[[dict[str, Any]], Reply] | None = None
        self.default = Reply(text="Hello from the companion.")
        self.in_flight = 0
        self.max_concurrent = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(_make_handler(self))

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def script(self, *replies: Reply) -> None:
        with self.lock:
            self.replies.extend(replies)

    def settings(self, **more: Any) -> dict[str, Any]:
        """VOICE overrides that point the companion at this server."""
        return {"COMPANION_BASE_URL": self.base_url, "COMPANION_API_KEY": "test-key", "COMPANION_MODEL": MODEL, **more}

    def sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)  # ends at once when the server stops

    def _next(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            if self.replies:
                return self.replies.pop(0)
        if self.respond is not None:
            return self.respond(body)
        return self.default

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        super().__exit__(*exc)


@pytest.fixture
def companion_server() -> Iterator[CompanionServer]:
    """A fresh CompanionServer for the test."""
    with CompanionServer() as server:
        yield server


@pytest.fixture
def companion_settings(companion_server: CompanionServer, settings: Any) -> CompanionServer:
    """VOICE points the companion at a fresh CompanionServer (retries off, a short timeout); returns the server."""
    settings.VOICE = {
        **settings.VOICE,
        **companion_server.settings(COMPANION_RETRIES=0, COMPANION_TIMEOUT_S=5.0),
    }
    return companion_server


# --- the wire -----------------------------------------------------------------------------------


def _pieces(text: str, count: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // max(1, count)))
    return [text[start : start + size] for start in range(0, len(text), size)]


def _arguments(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chunks(reply: Reply, include_usage: bool) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        payload: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        return payload

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(reply.text, reply.chunks):
        yield chunk({"content": piece})
    for index, (name, arguments) in enumerate(reply.tool_calls):
        first: dict[str, Any] = {"index": index, "type": "function", "function": {"name": name, "arguments": ""}}
        if reply.with_ids:
            first["id"] = f"call_fake{index}"
        yield chunk({"tool_calls": [first]})
        for piece in _pieces(_arguments(arguments), reply.chunks):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    if include_usage:
        final = chunk(None)
        final["usage"] = _usage(reply)
        yield final


def _completion(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_fake{index}",
                "type": "function",
                "function": {"name": name, "arguments": _arguments(arguments)},
            }
            for index, (name, arguments) in enumerate(reply.tool_calls)
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
        "usage": _usage(reply),
    }


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}


def _make_handler(server: CompanionServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            with server.lock:
                server.bodies.append(body)
                server.headers.append({key.lower(): value for key, value in self.headers.items()})
                server.in_flight += 1
                server.max_concurrent = max(server.max_concurrent, server.in_flight)
            try:
                self._answer(body, server._next(body))
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _answer(self, body: dict[str, Any], reply: Reply) -> None:
            server.sleep(reply.delay)
            if server.stopping.is_set():
                return
            if reply.status != 200:
                error = {"message": reply.error_message, "type": _ERROR_TYPES.get(reply.status, "server_error")}
                self.send_json(reply.status, {"error": error})
                return
            if not body.get("stream"):
                self.send_json(200, _completion(reply))
                return
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            chunks = list(_chunks(reply, include_usage))
            for number, payload in enumerate(chunks):
                if reply.stream_error and number == len(chunks) // 2:
                    payload = {"error": {"message": reply.error_message, "type": "server_error"}}
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()
                if reply.chunk_delay:
                    server.sleep(reply.chunk_delay)
                if server.stopping.is_set():
                    return
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler
