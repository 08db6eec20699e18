"""The plumbing shared by the tests' local HTTP servers (tests/companion_server.py, tests/asr_server.py).

Each fake service is a ``LocalHTTPServer``: its handler class served by a thread on a free port of
127.0.0.1, started and stopped as a context manager, at ``base_url`` (``http://127.0.0.1:PORT/v1``).
Its handler derives from ``QuietHandler``, which logs nothing and writes whole answers.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing, with helpers to send a whole answer."""

    def log_message(self, *args: object) -> None:
        pass

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json")


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up on a slow answer (a timeout, which the tests provoke) closes its
    socket; writing the late answer then fails, which is the expected end of it."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class LocalHTTPServer:
    """``handler`` served on a free port of 127.0.0.1 by a thread; a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
