"""The Live API end to end: the official openai SDK's `client.live.connect()` against a real daphne.

Every server event is read raw and validated strictly against `openai.types.live` (the SDK itself
parses without validating), on the server's own clock: one output delta per 80 ms model frame,
paced by the engine's tick.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI

from voice.testing.live_server import LiveServer

from .conftest import TIMEOUT
from .e2e_support import ended_conversation, live_server_fixture, server_alive  # noqa: F401 - fixtures
from .helpers import read_pcm16
from .strict_live import strict_live

server = live_server_fixture("live-e2e", {"REALTIME_MAX_SESSIONS": "2"})

FRAME_BYTES = {
    ("audio/pcm", 24000): 3840,
    ("audio/pcm", 16000): 2560,
    ("audio/pcmu", 8000): 640,
    ("audio/pcma", 8000): 640,
}


class LiveClient:
    """The SDK's connection, read raw so that every event is validated strictly first."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.received: list[dict[str, Any]] = []

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv_bytes(), TIMEOUT)
        event = json.loads(raw)
        strict_live(event)
        self.received.append(event)
        return event

    async def until(self, event_type: str) -> list[dict[str, Any]]:
        events = []
        while not events or events[-1]["type"] != event_type:
            events.append(await self.recv())
        return events


@asynccontextmanager
async def live_session(server: LiveServer, **session: Any) -> AsyncIterator[LiveClient]:
    client = AsyncOpenAI(
        api_key="sk-live-e2e",
        base_url=f"{server.http_url}/v1",
        websocket_base_url=f"{server.ws_url}/v1",
        max_retries=0,
    )
    async with client.live.connect(max_retries=0) as connection:
        live = LiveClient(connection)
        if session:
            await connection.session.start(session=session)
        yield live


async def test_start_audio_transcripts_and_a_clean_close(server: LiveServer) -> None:
    async with live_session(server, model="gpt-live-1", instructions="Be brief.") as live:
        started = await live.recv()
        assert started["type"] == "session.started"
        resource = started["session"]
        assert resource["model"] == "gpt-live-1" and resource["status"] == "active"
        assert resource["audio"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert abs(resource["expires_at"] - (time.time() + 3600)) < 60
        speech = read_pcm16("hello_booking_24k.wav")[: 48 * 1000]
        for start in range(0, len(speech), 3840):
            await live.connection.session.input_audio.append(
                audio=base64.b64encode(speech[start : start + 3840]).decode()
            )
        deltas, transcripts = [], []
        began = time.monotonic()
        while len(deltas) < 25:
            event = await live.recv()
            if event["type"] == "session.output_audio.delta":
                deltas.append(base64.b64decode(event["delta"]))
            elif event["type"] == "session.output_transcript.delta":
                transcripts.append(event)
        elapsed = time.monotonic() - began
        assert all(len(delta) == 3840 for delta in deltas), "one 80 ms delta per model frame"
        assert elapsed > 24 * 0.08 * 0.8, f"25 frames in {elapsed:.2f}s: faster than real time"
        starts = [t["start_ms"] for t in transcripts]
        assert starts == sorted(starts) and all(t["end_ms"] - t["start_ms"] == 80 for t in transcripts)
        await live.connection.session.close(event_id="close_1")
        events = await live.until("session.closed")
        closed = events[-1]
        assert closed["reason"] == "close_requested" and closed["session"]["id"] == resource["id"]
        with pytest.raises(websockets.ConnectionClosedOK) as ended:
            while True:
                await asyncio.wait_for(live.connection.recv_bytes(), TIMEOUT)
        assert ended.value.rcvd is not None and ended.value.rcvd.code == 1000
    conversation = await ended_conversation(server, resource["id"])
    assert conversation["dialect"] == "live" and conversation["end_reason"] == "close_requested"


@pytest.mark.parametrize(("kind", "rate"), [("audio/pcm", 16000), ("audio/pcmu", 8000), ("audio/pcma", 8000)])
async def test_output_in_the_session_format(server: LiveServer, kind: str, rate: int) -> None:
    audio_format = {"type": kind, "rate": rate}  # the SDK's types require the rate for G.711 too
    async with live_session(server, model="gpt-live-1", audio={"format": audio_format}) as live:
        started = await live.recv()
        assert started["session"]["audio"]["format"]["type"] == kind
        sizes = set()
        while len(sizes) < 1 or len(live.received) < 8:
            event = await live.recv()
            if event["type"] == "session.output_audio.delta":
                sizes.add(len(base64.b64decode(event["delta"])))
        assert sizes == {FRAME_BYTES[(kind, rate)]}
        await live.connection.session.close()
        await live.until("session.closed")


async def test_commands_before_start_a_second_start_and_mute(server: LiveServer) -> None:
    async with live_session(server) as live:
        await live.connection.session.input_audio.mute(event_id="early")
        error = await live.recv()
        assert error["type"] == "error" and error["client_event_id"] == "early"
        await live.connection.session.start(session={"model": "gpt-live-1"})
        assert (await live.until("session.started"))[-1]["session"]["model"] == "gpt-live-1"
        await live.connection.session.start(session={"model": "gpt-live-1"}, event_id="again")
        again = [e for e in await live.until("error")][-1]
        assert again["client_event_id"] == "again"
        await live.connection.session.input_audio.mute()
        assert (await live.until("session.input_audio.muted"))[-1]["type"] == "session.input_audio.muted"
        await live.connection.session.input_audio.unmute()
        await live.until("session.input_audio.unmuted")
        await live.connection.session.close()
        await live.until("session.closed")


async def test_an_unknown_model_is_an_error_naming_it_then_a_close(server: LiveServer) -> None:
    async with live_session(server, model="not-a-model") as live:
        error = await live.recv()
        assert error["type"] == "error" and error["error"]["param"] == "session.model"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(live.connection.recv_bytes(), TIMEOUT)


async def test_a_full_server_says_so_and_closes_with_1013(server: LiveServer) -> None:
    async with live_session(server, model="gpt-live-1") as first, live_session(server, model="gpt-live-1") as second:
        await first.until("session.started")
        await second.until("session.started")
        async with websockets.connect(f"{server.ws_url}/v1/live/sessions") as third:
            refusal = json.loads(await asyncio.wait_for(third.recv(), TIMEOUT))
            strict_live(refusal)
            assert refusal["type"] == "error" and refusal["error"]["code"] == "server_busy"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(third.recv(), TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def test_a_flush_of_queued_input_does_not_make_output_run_ahead(server: LiveServer) -> None:
    """LiveKit sends seconds of buffered audio at once after session.started: output stays paced."""
    async with live_session(server, model="gpt-live-1") as live:
        await live.until("session.started")
        speech = read_pcm16("weather_en_24k.wav")[: 48 * 3000]  # 3 s, sent as fast as the socket takes it
        for start in range(0, len(speech), 3840):
            await live.connection.session.input_audio.append(
                audio=base64.b64encode(speech[start : start + 3840]).decode()
            )
        began, deltas = time.monotonic(), 0
        while deltas < 30:
            if (await live.recv())["type"] == "session.output_audio.delta":
                deltas += 1
        elapsed = time.monotonic() - began
        assert elapsed >= 29 * 0.08 * 0.85, f"30 deltas in {elapsed:.2f}s: ahead of real time"
        assert not [e for e in live.received if e["type"] == "error"]
        await live.connection.session.close()
        await live.until("session.closed")


async def test_session_start_moves_the_session_to_the_model_it_names(tmp_path, demo_checkpoint) -> None:
    """A Live client names its model only in session.start: the session leaves the default model's
    slot for one of that model (here a second model type, loaded from the same demo checkpoint)."""
    from .e2e_support import query_db

    live_server = LiveServer(tmp_path, {"BASE_MODEL": str(demo_checkpoint), "REALTIME_MAX_SESSIONS": "1"})
    live_server.start(timeout=TIMEOUT * 6)
    try:
        # Both checkpoints are the demo's, so its name selects the last type loaded: base.
        async with live_session(live_server, model="moshi-demo-random-weights") as live:
            started = (await live.until("session.started"))[-1]
            deltas = 0
            while deltas < 5:
                deltas += (await live.recv())["type"] == "session.output_audio.delta"
            # The default model's only slot was given back: another session can hold it meanwhile.
            async with live_session(live_server, model="gpt-live-1") as other:
                assert (await other.until("session.started"))[-1]["session"]["model"] == "gpt-live-1"
                await other.connection.session.close()
                await other.until("session.closed")
            await live.connection.session.close()
            await live.until("session.closed")
        conversation = await ended_conversation(live_server, started["session"]["id"])
        assert conversation["model_type"] == "base"
        assert query_db(live_server.db_path, "SELECT COUNT(*) FROM transcripts_conversation")[0][0] == 2
    finally:
        live_server.stop()
