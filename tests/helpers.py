"""Test helpers: a connected session through WebsocketCommunicator, and reading the shared audio."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from channels.testing import WebsocketCommunicator

from voice.protocol import Dialect

from .conftest import TIMEOUT, audio_path
from .strict import strict


def read_pcm16(name: str) -> bytes:
    """The raw pcm16 bytes of a 24 kHz mono WAV from tests/audio."""
    with wave.open(str(audio_path(name))) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.readframes(wav.getnframes())


def silence(ms: int) -> bytes:
    """``ms`` milliseconds of digital silence as pcm16: what a client's mic stream carries between turns."""
    return b"\x00\x00" * (24 * ms)


def append_events(pcm: bytes, chunk_ms: int = 100) -> list[dict[str, Any]]:
    step = 48 * chunk_ms  # bytes of pcm16 at 24 kHz per chunk
    return [
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + step]).decode()}
        for i in range(0, len(pcm), step)
    ]


class Client:
    """A WebsocketCommunicator that speaks JSON and validates every server event strictly."""

    def __init__(self, communicator: WebsocketCommunicator, dialect: Dialect) -> None:
        self.communicator = communicator
        self.dialect = dialect
        self.received: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.communicator.send_to(text_data=event if isinstance(event, str) else json.dumps(event))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        event = json.loads(await self.communicator.receive_from(timeout=timeout))
        strict(event, self.dialect)
        self.received.append(event)
        return event

    async def recv_until(self, event_type: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Every event up to and including the first of ``event_type``."""
        events = []
        while True:
            event = await self.recv(timeout)
            events.append(event)
            if event["type"] == event_type:
                return events


async def stream(client: Client, pcm: bytes, max_queued_frames: int = 24) -> None:
    """Append ``pcm`` in 100 ms chunks as fast as the model takes it.

    A real client streams in real time; the tests' engine steps as fast as it can (TICK_MS 0), so
    sending is paced on the slot's input queue instead, which never overflows (the server drops
    audio past REALTIME_INPUT_QUEUE_FRAMES) and never runs dry while there is audio left to send.
    """
    from voice.engine.manager import get_manager

    manager = get_manager()
    assert manager is not None

    def queued() -> int:
        slots = [slot for engine in manager.engines.values() for slot in getattr(engine, "slots", [])]
        return max((slot.queued_frames for slot in slots if slot is not None), default=0)

    # Events still waiting for the consumer count too: their frames are not in the slot's queue yet.
    pending = client.communicator.input_queue
    for event in append_events(pcm):
        deadline = time.monotonic() + TIMEOUT
        while pending.qsize() or queued() > max_queued_frames:
            assert time.monotonic() < deadline, "the model took no audio for TIMEOUT seconds"
            await asyncio.sleep(0.005)  # waiting for the model, bounded by the deadline above
        await client.send(event)


@asynccontextmanager
async def connected(
    dialect: Dialect = Dialect.GA, path: str = "/v1/realtime?model=gpt-realtime", subprotocols: list[str] | None = None
) -> AsyncIterator[Client]:
    """Connect, check the greeting, yield the client, and always disconnect."""
    from realtime_project.asgi import application

    headers = [(b"host", b"testserver"), (b"authorization", b"Bearer sk-test")]
    if dialect is Dialect.BETA:
        headers.append((b"openai-beta", b"realtime=v1"))
    communicator = WebsocketCommunicator(application, path, headers=headers, subprotocols=subprotocols)
    connected_ok, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected_ok
    client = Client(communicator, dialect)
    try:
        created = await client.recv()
        assert created["type"] == "session.created"
        if dialect is Dialect.BETA:
            assert (await client.recv())["type"] == "conversation.created"
        yield client
    finally:
        await communicator.disconnect(timeout=TIMEOUT)
