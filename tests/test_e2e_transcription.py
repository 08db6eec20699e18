"""Input transcription end to end: the openai SDK, a real daphne, and a real local ASR server.

The server process sends each committed turn to the local OpenAI-compatible transcription API
(tests/asr_server.py) over HTTP, exactly as it would to OpenAI, Groq or speaches.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Iterator

import pytest
from openai import AsyncOpenAI

from voice.protocol import Dialect
from voice.testing.live_server import LiveServer

from .asr_server import ASRServer
from .conftest import TIMEOUT
from .helpers import read_pcm16
from .strict import strict


@pytest.fixture(scope="module")
def asr() -> Iterator[ASRServer]:
    with ASRServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, asr: ASRServer) -> Iterator[LiveServer]:
    env = {"ASR_BASE_URL": asr.base_url, "ASR_API_KEY": "e2e-key", "ASR_MODEL": "ok", "RESPONSE_MAX_MS": "1600"}
    live = LiveServer(tmp_path_factory.mktemp("e2e-asr"), env)
    live.start(timeout=TIMEOUT * 6)
    try:
        yield live
    finally:
        live.stop()


async def test_a_spoken_turn_is_transcribed_in_the_event_sequence(server: LiveServer, asr: ASRServer) -> None:
    client = AsyncOpenAI(api_key="sk-e2e", base_url=f"{server.http_url}/v1", websocket_base_url=f"{server.ws_url}/v1")
    pcm = read_pcm16("weather_en_24k.wav") + bytes(48000 * 2)  # the question, then 2 s of silence
    events: list[dict] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"}}},
            }
        )

        async def microphone() -> None:
            for offset in range(0, len(pcm), 4800):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[offset : offset + 4800]).decode())
                await asyncio.sleep(0.1)  # real time
            while True:  # a microphone keeps sending silence
                await conn.input_audio_buffer.append(audio=base64.b64encode(bytes(4800)).decode())
                await asyncio.sleep(0.1)

        mic = asyncio.create_task(microphone())
        try:
            async with asyncio.timeout(TIMEOUT * 2):
                while not {"response.done", "conversation.item.input_audio_transcription.completed"} <= {
                    e["type"] for e in events
                }:
                    event = json.loads(await conn.recv_bytes())
                    strict(event, Dialect.GA)
                    events.append(event)
        finally:
            mic.cancel()
    kinds = [event["type"] for event in events]
    committed = events[kinds.index("input_audio_buffer.committed")]
    completed = events[kinds.index("conversation.item.input_audio_transcription.completed")]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert kinds.index("input_audio_buffer.committed") < kinds.index(
        "conversation.item.input_audio_transcription.completed"
    )
    assert completed["item_id"] == committed["item_id"]
    assert completed["transcript"].startswith("segment 1 of ")
    [received] = asr.state.requests
    assert received.fields["model"] == "ok", "ASR_MODEL names the model the ASR service is asked for"
    assert received.fields["language"] == "en" and received.wav_rate == 24000
    assert 4.0 < received.wav_frames / 24000 < 6.5, "the committed turn is the spoken question"

    def stored() -> list[sqlite3.Row]:
        with sqlite3.connect(server.db_path) as db:
            db.row_factory = sqlite3.Row
            return db.execute(
                "SELECT t.status, t.text, t.model, i.item_id, i.text AS item_text FROM transcripts_transcription t "
                "JOIN transcripts_conversationitem i ON i.id = t.item_id"
            ).fetchall()

    async with asyncio.timeout(TIMEOUT):
        while not (rows := stored()):
            await asyncio.sleep(0.1)
    assert rows[0]["status"] == "completed" and rows[0]["item_id"] == committed["item_id"]
    assert rows[0]["item_text"] == completed["transcript"] and rows[0]["model"] == "ok"


async def test_live_user_speech_becomes_input_transcript_fragments_in_order(server: LiveServer, asr: ASRServer) -> None:
    """The Live API: a user segment found by the VAD goes to the same ASR service, and its text comes
    back as session.input_transcript.delta fragments on the session clock, merged in non-decreasing
    start_ms order with the model's own fragments."""
    from .strict_live import strict_live

    before = len(asr.state.requests)
    client = AsyncOpenAI(api_key="sk-e2e", base_url=f"{server.http_url}/v1", websocket_base_url=f"{server.ws_url}/v1")
    pcm = read_pcm16("weather_en_24k.wav") + bytes(48000 * 2)
    events: list[dict] = []
    async with client.live.connect(max_retries=0) as conn:
        await conn.session.start(session={"model": "gpt-live-1"})

        async def microphone() -> None:
            for offset in range(0, len(pcm), 3840):
                await conn.session.input_audio.append(audio=base64.b64encode(pcm[offset : offset + 3840]).decode())
                await asyncio.sleep(0.08)  # real time
            while True:
                await conn.session.input_audio.append(audio=base64.b64encode(bytes(3840)).decode())
                await asyncio.sleep(0.08)

        mic = asyncio.create_task(microphone())
        try:
            async with asyncio.timeout(TIMEOUT * 2):
                # Until the segment's fragments (released together with the model's fragments they
                # held back, before the next audio delta) have all come.
                while not (
                    any(e["type"] == "session.input_transcript.delta" for e in events)
                    and events[-1]["type"] == "session.output_audio.delta"
                ):
                    event = json.loads(await conn.recv_bytes())
                    strict_live(event)
                    events.append(event)
        finally:
            mic.cancel()
        await conn.session.close()
    fragments = [
        e for e in events if e["type"] in ("session.input_transcript.delta", "session.output_transcript.delta")
    ]
    starts = [f["start_ms"] for f in fragments]
    assert starts == sorted(starts), "fragments of both speakers in non-decreasing start_ms"
    user = [f for f in fragments if f["type"] == "session.input_transcript.delta"]
    assert "".join(f["delta"] for f in user).strip().startswith("segment")
    # The demo model speaks all the time, so its fragments went out before the user's transcript
    # came back (500 ms at most each): the user's words are stamped from there on, never earlier.
    received = asr.state.requests[before]
    assert received.fields["model"] == "ok" and received.wav_rate == 24000
    assert 4.0 < received.wav_frames / 24000 < 6.5, "the segment is the spoken question"
    assert user[-1]["end_ms"] - user[0]["start_ms"] <= received.wav_frames / 24, "words spread over the segment"
