"""The engine process's wire format: length-prefixed messages over a local Unix socket.

Every web worker talks to the one engine process per device (voice/engine/service.py) through
one connection per session, plus short-lived connections for status queries. A message is a
4-byte little-endian length (of what follows), a 1-byte kind and a payload. Control messages
carry JSON; audio goes as raw float32 samples, because at 32 sessions the engine exchanges 800
frames a second and a JSON or pickle round trip per frame would cost the step its time.

Plain Python and numpy: the service and the client (voice/engine/remote.py) frame and parse with
these functions, and the tests check them without a socket.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import numpy as np

from .slots import FRAME_SAMPLES, FrameOutput

# Worker -> engine
QUERY = b"Q"  # JSON {}: answered by STATUS; the connection may ask again or close
OPEN = b"O"  # JSON {"model_type", "paced", "detect_speech"}: answered by OPENED; the connection is then the session's
FRAME = b"F"  # FRAME_SAMPLES float32: one 80 ms input frame
KEEP_RUNNING = b"K"  # one byte, 0/1: step on silence while a response is open
DETECT_SPEECH = b"V"  # one byte, 0/1: run the VAD on this session's audio (turn detection is on)
SPEAK = b"T"  # utf-8 text the slot is to say in the model's voice (see forcing.py)
HUSH = b"H"  # drop what the slot was to say and has not said yet
# Engine -> worker
STATUS = b"S"  # JSON: device, models, slots, step statistics (see service.status)
OPENED = b"o"  # JSON {"ok": true, "index", "model_name"} or {"ok": false, "code", "message"}
OUTPUT = b"Y"  # one FrameOutput (see encode_output)
FAILURE = b"X"  # frames done (uint64) + utf-8 text: a step failed, or a text could not be queued (the session goes on)

HEADER = struct.Struct("<IB")  # length of kind + payload, kind
MAX_MESSAGE_BYTES = 1 << 20  # a status or an output is a few KiB; anything bigger is a broken peer
# flags, latency_s, ready_at, frames done, forced pieces left, text bytes, speech count
_OUTPUT_HEAD = struct.Struct("<BddQIHH")
_CLIENT_AUDIO, _HAS_PCM, _HAS_HEARD, _FORCED, _HAS_TEXT = 1, 2, 4, 8, 16
FRAME_BYTES = FRAME_SAMPLES * 4


class WireError(Exception):
    """A peer sent something that is not this format: the connection is closed."""


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload) + 1, kind[0]) + payload


def json_message(kind: bytes, body: dict[str, Any]) -> bytes:
    return message(kind, json.dumps(body).encode())


def parse_header(header: bytes) -> tuple[bytes, int]:
    """The kind and the payload's length of a message whose first HEADER.size bytes are ``header``."""
    length, kind = HEADER.unpack(header)
    if not 1 <= length <= MAX_MESSAGE_BYTES:
        raise WireError(f"message length {length} out of bounds")
    return bytes([kind]), length - 1


def parse_json(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"bad JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("JSON payload is not an object")
    return body


def frame_message(frame: np.ndarray) -> bytes:
    data = np.ascontiguousarray(frame, dtype=np.float32)
    if data.size != FRAME_SAMPLES:
        raise ValueError(f"a frame has {FRAME_SAMPLES} samples, not {data.size}")
    return message(FRAME, data.tobytes())


def parse_frame(payload: bytes) -> np.ndarray:
    if len(payload) != FRAME_BYTES:
        raise WireError(f"a frame is {FRAME_BYTES} bytes, not {len(payload)}")
    return np.frombuffer(payload, dtype=np.float32).copy()  # writable: torch.from_numpy wants that


_DONE = struct.Struct("<Q")


def failure_message(done: int, text: str) -> bytes:
    """A failure, with how many of the session's frames the engine has finished (as an OUTPUT says):
    a worker that saw only failures for a while must not believe its frames still wait."""
    return message(FAILURE, _DONE.pack(done) + text.encode())


def parse_failure(payload: bytes) -> tuple[int, str]:
    if len(payload) < _DONE.size:
        raise WireError("a failure starts with the frames done")
    return _DONE.unpack_from(payload)[0], payload[_DONE.size :].decode(errors="replace")


def parse_text(payload: bytes) -> str:
    try:
        return payload.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"bad text: {exc}") from None


def flag_message(kind: bytes, value: bool) -> bytes:
    return message(kind, b"\x01" if value else b"\x00")


def parse_flag(payload: bytes) -> bool:
    if payload not in (b"\x00", b"\x01"):
        raise WireError("a flag is one byte, 0 or 1")
    return payload == b"\x01"


def encode_output(output: FrameOutput, done: int) -> bytes:
    """One FrameOutput, plus ``done``: how many of the session's client frames the engine has
    finished with (stepped or refused), so that the worker knows how many still wait there without
    a message per frame. What the model heard goes only with client audio (for recordings)."""
    heard = output.heard if output.client_audio else None
    text = (output.text or "").encode()
    flags = (
        (_CLIENT_AUDIO if output.client_audio else 0)
        | (_HAS_PCM if output.pcm is not None else 0)
        | (_HAS_HEARD if heard is not None else 0)
        | (_FORCED if output.forced else 0)
        | (_HAS_TEXT if output.text is not None else 0)
    )
    parts = [
        _OUTPUT_HEAD.pack(
            flags, output.latency_s, output.ready_at, done, output.forced_left, len(text), len(output.speech)
        ),
        text,
        np.asarray(output.speech, dtype=np.float32).tobytes(),
    ]
    for samples in (output.pcm, heard):
        if samples is not None:
            parts.append(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    return message(OUTPUT, b"".join(parts))


def decode_output(payload: bytes) -> tuple[FrameOutput, int]:
    """The FrameOutput and the frames done (see encode_output)."""
    try:
        flags, latency_s, ready_at, done, forced_left, text_bytes, speech_count = _OUTPUT_HEAD.unpack_from(payload)
        offset = _OUTPUT_HEAD.size
        text = payload[offset : offset + text_bytes].decode() if flags & _HAS_TEXT else None
        offset += text_bytes
        speech = np.frombuffer(payload, dtype=np.float32, count=speech_count, offset=offset).tolist()
        offset += 4 * speech_count
        arrays: list[np.ndarray | None] = []
        for flag in (_HAS_PCM, _HAS_HEARD):
            if flags & flag:
                arrays.append(np.frombuffer(payload, dtype=np.float32, count=FRAME_SAMPLES, offset=offset).copy())
                offset += FRAME_BYTES
            else:
                arrays.append(None)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"bad output: {exc}") from None
    if offset != len(payload):
        raise WireError("trailing bytes after an output")
    output = FrameOutput(
        text=text,
        pcm=arrays[0],
        speech=speech,
        client_audio=bool(flags & _CLIENT_AUDIO),
        latency_s=latency_s,
        heard=arrays[1],
        ready_at=ready_at,
        forced=bool(flags & _FORCED),
        forced_left=forced_left,
    )
    return output, done


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One message; IncompleteReadError at the end of the stream, WireError for garbage."""
    kind, length = parse_header(await reader.readexactly(HEADER.size))
    return kind, await reader.readexactly(length)
