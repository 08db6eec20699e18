"""The engine process: the models loaded once per device, serving every web worker's sessions.

A web worker's event loop must not share a GIL with the model step (at 20 sessions the step took
81 ms in the web process against 55 ms alone), and a GPU must hold one copy of each model however
many workers there are. So the ModelManager runs here, in a process of its own (`manage.py
run_engine`, started by a server's AppConfig.ready or by the supervisor), and workers reach it over
a Unix socket (voice/engine/remote.py), one connection per session:

- a connection's first message is QUERY (status: slots, steps; asked again or closed) or OPEN (a
  slot of a model type; answered OPENED, or refused when every slot is taken);
- after OPEN the connection is the session's: FRAME / KEEP_RUNNING / DETECT_SPEECH in, one OUTPUT
  per step out; when it closes, from either side or because the worker died, the slot is free.

The asyncio loop here only moves bytes; the model steps on the engines' own inference threads,
exactly as in a single process. Like vLLM's EngineCore behind its API server, this process owns
the model and nothing else: no Django request, no database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from . import wire
from .manager import ModelManager
from .slots import EngineFailure, Slot

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0  # a connection that says nothing is not a worker
SPEECH_QUEUE_FULL = "Too many texts are waiting to be said; this one was dropped."


class EngineService:
    def __init__(self, manager: ModelManager, socket_path: Path) -> None:
        self.manager = manager
        self.socket_path = socket_path
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set; then refuse new connections and close the sessions' ones."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a socket file left by an engine that was killed
        server = await asyncio.start_unix_server(self._connection, path=str(self.socket_path), limit=1 << 20)
        os.chmod(self.socket_path, 0o600)  # the workers run as the same user; nobody else may step the model
        log.info("engine listening on %s", self.socket_path)
        try:
            await stop.wait()
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            # Every session's connection closes: its worker tells it the engine is gone.
            for writer in list(self._writers):
                writer.close()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._writers.add(writer)
        self._handlers.add(handler)
        try:
            while True:
                kind, payload = await asyncio.wait_for(wire.read_message(reader), OPEN_TIMEOUT_S)
                if kind == wire.QUERY:
                    writer.write(wire.json_message(wire.STATUS, self.manager.status()))
                    await writer.drain()
                    continue
                if kind != wire.OPEN:
                    raise wire.WireError(f"unexpected message {kind!r} before OPEN")
                await self._session(wire.parse_json(payload), reader, writer)
                return
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the worker closed, died, or never spoke
        except wire.WireError as exc:
            log.warning("engine connection closed: %s", exc)
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.close()

    async def _session(self, request: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        model_type = request.get("model_type")
        if not isinstance(model_type, str) or model_type not in self.manager.engines:
            writer.write(
                wire.json_message(
                    wire.OPENED, {"ok": False, "code": "unknown_model", "message": f"{model_type!r} is not loaded"}
                )
            )
            await writer.drain()
            return
        slot = await self.manager.open_slot(
            model_type, paced=request.get("paced") is True, detect_speech=request.get("detect_speech") is not False
        )
        if slot is None:
            writer.write(
                wire.json_message(wire.OPENED, {"ok": False, "code": "busy", "message": "every slot is taken"})
            )
            await writer.drain()
            return
        pump = asyncio.create_task(self._pump(slot, writer), name=f"engine-slot-{model_type}-{slot.index}")
        refused = 0
        try:
            writer.write(
                wire.json_message(
                    wire.OPENED, {"ok": True, "index": slot.index, "model_name": self.manager.model_name(model_type)}
                )
            )
            await writer.drain()
            while True:
                kind, payload = await wire.read_message(reader)
                if kind == wire.FRAME:
                    if not slot.push(wire.parse_frame(payload)):
                        refused += 1  # the worker bounds what it sends; this is the last guard
                        slot.count_refused()
                elif kind == wire.KEEP_RUNNING:
                    slot.set_keep_running(wire.parse_flag(payload))
                elif kind == wire.DETECT_SPEECH:
                    slot.detect_speech = wire.parse_flag(payload)
                elif kind == wire.SPEAK:
                    if not slot.speak(wire.parse_text(payload)):
                        writer.write(wire.failure_message(slot.done, SPEECH_QUEUE_FULL))
                elif kind == wire.HUSH:
                    slot.hush()
                else:
                    raise wire.WireError(f"unexpected message {kind!r} in a session")
        finally:
            slot.release()
            pump.cancel()
            if refused:
                log.warning("slot %d: %d frames refused (inbox full)", slot.index, refused)

    @staticmethod
    async def _pump(slot: Slot, writer: asyncio.StreamWriter) -> None:
        """Send each of the slot's outputs; a worker that reads slowly loses the oldest (Outbox)."""
        with contextlib.suppress(ConnectionError):
            while True:
                item = await slot.outbox.get()
                if isinstance(item, EngineFailure):
                    writer.write(wire.failure_message(slot.done, item.message))
                else:
                    writer.write(wire.encode_output(item, slot.done))
                await writer.drain()
