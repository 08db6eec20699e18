"""A local HTTP server that speaks OpenAI's transcription API, for testing the ASR backend for real.

POST /v1/audio/transcriptions takes multipart form data (file, model, language, prompt, ...).
What it answers is set per request by the model name the test asks for ("ok", "slow", "fail",
"garbage", "flaky"), and every request is kept for the test to inspect.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import threading
import time
import wave
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from .local_http import LocalHTTPServer, QuietHandler


@dataclass
class ReceivedRequest:
    fields: dict[str, str]
    wav_rate: int
    wav_channels: int
    wav_width: int
    wav_frames: int
    filename: str | None


@dataclass
class FakeASR:
    """The server's state: requests received, delays and failures to play."""

    requests: list[ReceivedRequest] = field(default_factory=list)
    delays: dict[int, float] = field(default_factory=dict)  # request number (from 1) -> seconds to wait
    flaky_failures: int = 0  # "flaky" model: answer 500 this many times, then succeed
    lock: threading.Lock = field(default_factory=threading.Lock)


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], bytes, str | None]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    audio, filename = b"", None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == "file":
            audio, filename = part.get_payload(decode=True), part.get_filename()
        else:
            fields[name] = part.get_content().strip()
    return fields, audio, filename


def make_handler(state: FakeASR) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") != "/v1/audio/transcriptions":
                self.send_json(404, {"error": {"message": "not found"}})
                return
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fields, audio, filename = _parse_multipart(self.headers["Content-Type"], body)
            with wave.open(io.BytesIO(audio)) as wav:
                received = ReceivedRequest(
                    fields, wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.getnframes(), filename
                )
            with state.lock:
                state.requests.append(received)
                index = len(state.requests)
            model = fields.get("model", "")
            text = f"segment {index} of {received.wav_frames} samples"
            time.sleep(max(state.delays.get(index, 0.0), 5.0 if model == "slow" else 0.0))
            if model == "fail":
                self.send_json(500, {"error": {"message": "the ASR service broke", "type": "server_error"}})
            elif model == "garbage":
                self.send_body(200, b"<html>not json</html>", "application/json")
            elif model == "flaky" and index <= state.flaky_failures:
                self.send_json(500, {"error": {"message": "try again", "type": "server_error"}})
            else:
                self.send_json(200, {"text": text})

    return Handler


class ASRServer(LocalHTTPServer):
    """The fake transcription service, on a free port of 127.0.0.1; a context manager."""

    def __init__(self) -> None:
        self.state = FakeASR()
        super().__init__(make_handler(self.state))
