"""A web worker's side of the engine process: the manager and slots the session runtime uses.

RemoteManager and RemoteSlot have the shape of ModelManager and Slot as the runtime sees them
(ready, model_names(), open_slot(), status(); push(), set_keep_running(), outbox, release()),
so a session does not know whether its model steps in this process or in the engine process
(voice/engine/service.py). Each session has its own connection to the engine:

- its frames go out as they come, at most ``inbox_frames`` ahead of what the engine has done
  (each output says how many it has done), the same bound as an in-process slot's inbox;
- its outputs come back into a bounded Outbox, read by the session's pump as before;
- when the connection breaks (the engine died or is restarting) the session gets a fatal
  EngineFailure at once: an `error` event and a clean close, never a session left hanging.

Status queries (/readyz, /metrics) use short connections of their own, with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import wire
from .forcing import MAX_TEXT_CHARS
from .slots import OUTBOX_FRAMES, EngineFailure, FrameOutput, Outbox

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 2.0
STATUS_MAX_AGE_S = 1.0
ENGINE_GONE = "The model engine stopped; this session cannot go on. Connect again."


class EngineUnavailable(Exception):
    """No engine answers at the socket (not started yet, restarting, or dead)."""


class RemoteSlot:
    """A session's slot in the engine process, seen from the web worker's event loop."""

    def __init__(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, inbox_frames: int, paced: bool
    ) -> None:
        self.index = index
        self.inbox_frames = inbox_frames
        self.paced = paced
        self.outbox = Outbox(OUTBOX_FRAMES)
        self.released = False
        self.dropped_outputs = 0
        self._reader = reader
        self._writer = writer
        self._pushed = 0
        self._done = 0
        self._keep_running = False
        self._detect_speech: bool | None = None
        self._receiver = asyncio.get_running_loop().create_task(self._receive(), name=f"engine-slot-{index}")

    @property
    def queued_frames(self) -> int:
        """Frames sent to the engine that it has not stepped yet."""
        return self._pushed - self._done

    def push(self, frame: np.ndarray) -> bool:
        """Send one input frame; False when ``inbox_frames`` are already waiting in the engine."""
        if self.released or self._writer.is_closing() or self.queued_frames >= self.inbox_frames:
            return False
        self._writer.write(wire.frame_message(frame))
        self._pushed += 1
        return True

    def set_keep_running(self, value: bool) -> None:
        if value != self._keep_running and not self.released:
            self._keep_running = value
            self._writer.write(wire.flag_message(wire.KEEP_RUNNING, value))

    def set_detect_speech(self, value: bool) -> None:
        if value != self._detect_speech and not self.released:
            self._detect_speech = value
            self._writer.write(wire.flag_message(wire.DETECT_SPEECH, value))

    def speak(self, text: str) -> bool:
        """Say ``text`` in the model's voice (see voice/engine/forcing.py)."""
        if self.released or self._writer.is_closing():
            return False
        self._writer.write(wire.message(wire.SPEAK, text[:MAX_TEXT_CHARS].encode()))
        return True

    def hush(self) -> None:
        if not self.released and not self._writer.is_closing():
            self._writer.write(wire.message(wire.HUSH))

    def release(self) -> None:
        """Close the connection: the engine frees the slot when it sees the end of the stream."""
        if self.released:
            return
        self.released = True
        self._receiver.cancel()
        self._writer.close()

    async def _receive(self) -> None:
        try:
            while True:
                kind, payload = await wire.read_message(self._reader)
                if kind == wire.OUTPUT:
                    output, done = wire.decode_output(payload)
                    self._done = max(self._done, done)
                    self._deliver(output)
                elif kind == wire.FAILURE:
                    done, text = wire.parse_failure(payload)
                    self._done = max(self._done, done)
                    self._deliver(EngineFailure(text))
                else:
                    raise wire.WireError(f"unexpected message {kind!r} from the engine")
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, wire.WireError) as exc:
            if not self.released:
                log.error("slot %d: lost the engine (%s)", self.index, exc)
                self._deliver(EngineFailure(ENGINE_GONE, fatal=True))

    def _deliver(self, item: FrameOutput | EngineFailure) -> None:
        if self.released:
            return
        if self.outbox.put_dropping_oldest(item):
            self.dropped_outputs += 1


class RemoteManager:
    """The engine process at ``socket_path``, as the session runtime, /readyz and /metrics see it."""

    def __init__(self, socket_path: Path, inbox_frames: int) -> None:
        self.socket_path = socket_path
        self.inbox_frames = inbox_frames
        self._status: dict[str, Any] | None = None
        self._status_at = float("-inf")

    # --- status ---------------------------------------------------------------------------------

    def status(self, max_age: float = STATUS_MAX_AGE_S) -> dict[str, Any] | None:
        """The engine's status (see ModelManager.status), at most ``max_age`` seconds old; None when
        no engine answers. May block for STATUS_TIMEOUT_S: on the event loop, use fresh_status."""
        if time.monotonic() - self._status_at > max_age:
            try:
                self._status = query_status(self.socket_path)
            except (OSError, wire.WireError) as exc:
                if self._status is not None:
                    log.warning("the engine at %s does not answer: %s", self.socket_path, exc)
                self._status = None
            self._status_at = time.monotonic()
        return self._status

    async def fresh_status(self) -> dict[str, Any] | None:
        """status() for the event loop: the query runs on a thread."""
        if time.monotonic() - self._status_at <= STATUS_MAX_AGE_S:
            return self._status
        return await asyncio.to_thread(self.status)

    @property
    def ready(self) -> bool:
        """An engine answers and its models are loaded and warm."""
        status = self.status()
        return bool(status and status.get("ready"))

    @property
    def device(self) -> str:
        return str((self._status or {}).get("device", "unknown"))

    def model_names(self) -> dict[str, str]:
        """The model types the engine has loaded, with their names, as of the last status (this is
        called on the event loop: it never asks the engine; admission's fresh_status keeps it current)."""
        return {model_type: info["name"] for model_type, info in (self._status or {}).get("models", {}).items()}

    def model_name(self, model_type: str) -> str:
        return self.model_names()[model_type]

    # --- sessions -------------------------------------------------------------------------------

    async def open_slot(self, model_type: str, *, paced: bool = False, detect_speech: bool = True) -> RemoteSlot | None:
        """A slot in the engine, or None when every slot of that model is taken.

        Raises EngineUnavailable when no engine answers (it is marked not ready until one does).
        """
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket_path), limit=1 << 20), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            self._status_at = float("-inf")  # ask again at the next status
            raise EngineUnavailable(str(exc)) from None
        try:
            request = {"model_type": model_type, "paced": paced, "detect_speech": detect_speech}
            writer.write(wire.json_message(wire.OPEN, request))
            kind, payload = await asyncio.wait_for(wire.read_message(reader), CONNECT_TIMEOUT_S)
            if kind != wire.OPENED:
                raise wire.WireError(f"expected OPENED, got {kind!r}")
            answer = wire.parse_json(payload)
            if answer.get("ok"):
                index = int(answer["index"])
        except (OSError, TimeoutError, asyncio.IncompleteReadError, wire.WireError, KeyError, ValueError) as exc:
            writer.close()
            self._status_at = float("-inf")
            raise EngineUnavailable(str(exc)) from None
        except BaseException:  # cancelled (the client left while it was admitted): the slot goes back
            writer.close()
            raise
        if not answer.get("ok"):
            writer.close()
            if answer.get("code") == "busy":
                return None
            raise EngineUnavailable(str(answer.get("message", "refused")))
        slot = RemoteSlot(index, reader, writer, self.inbox_frames, paced)
        slot._detect_speech = detect_speech
        return slot

    def stop(self) -> None:
        """Nothing to stop here: the engine process has its own life (see child.py)."""


def query_status(socket_path: Path, timeout: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    """Ask the engine for its status over a short blocking connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(wire.json_message(wire.QUERY, {}))
        kind, length = wire.parse_header(_receive_exactly(sock, wire.HEADER.size))
        payload = _receive_exactly(sock, length)
    if kind != wire.STATUS:
        raise wire.WireError(f"expected STATUS, got {kind!r}")
    return wire.parse_json(payload)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the engine closed the connection")
        chunks += chunk
    return bytes(chunks)
