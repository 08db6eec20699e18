"""Input transcription through an OpenAI-compatible API, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from channels.db import database_sync_to_async

from transcripts.models import Transcription
from voice.asr import OpenAICompatibleBackend
from voice.protocol import Dialect
from voice.protocol.effects import TranscriptionRequest
from voice.protocol.records import TranscriptionOutcome
from voice.transcriber import SessionTranscriber

from .asr_server import ASRServer
from .conftest import TIMEOUT
from .helpers import append_events, connected, read_pcm16


@pytest.fixture
def asr():
    with ASRServer() as server:
        yield server


def request(item_id: str, seconds: float, model: str = "ok", language: str | None = "en") -> TranscriptionRequest:
    audio = (0.1 * np.sin(np.arange(int(24000 * seconds)) / 10)).astype(np.float32)
    return TranscriptionRequest(item_id=item_id, audio=audio, model=model, language=language, prompt="Weather talk.")


async def transcribe_all(
    asr: ASRServer,
    requests: list[TranscriptionRequest],
    *,
    timeout: float = 5.0,
    retries: int = 0,
    max_pending: int = 4,
) -> list[TranscriptionOutcome]:
    outcomes: list[TranscriptionOutcome] = []

    async def deliver(outcome: TranscriptionOutcome) -> None:
        outcomes.append(outcome)

    backend = OpenAICompatibleBackend(base_url=asr.base_url, api_key="test-key", default_model="")
    transcriber = SessionTranscriber(backend, deliver, timeout=timeout, retries=retries, max_pending=max_pending)
    for item in requests:
        transcriber.submit(item)
    async with asyncio.timeout(TIMEOUT):
        while len(outcomes) < len(requests):
            await asyncio.sleep(0.02)
    await transcriber.finish(timeout=0)
    return outcomes


async def test_a_segment_is_sent_as_a_wav_with_the_model_and_language(asr: ASRServer) -> None:
    [outcome] = await transcribe_all(asr, [request("item_a", 1.5)])
    assert outcome.error is None and outcome.text == "segment 1 of 36000 samples"
    [received] = asr.state.requests
    assert (received.wav_rate, received.wav_channels, received.wav_width, received.wav_frames) == (24000, 1, 2, 36000)
    assert received.fields["model"] == "ok" and received.fields["language"] == "en"
    assert received.fields["prompt"] == "Weather talk." and received.filename == "speech.wav"
    assert outcome.audio_seconds == pytest.approx(1.5) and outcome.latency_ms >= 0


async def test_results_arrive_in_commit_order_when_answers_do_not(asr: ASRServer) -> None:
    asr.state.delays[1] = 1.0  # the first segment's answer comes last
    outcomes = await transcribe_all(asr, [request("item_1", 0.5), request("item_2", 0.6), request("item_3", 0.7)])
    assert [o.item_id for o in outcomes] == ["item_1", "item_2", "item_3"]
    assert all(o.error is None for o in outcomes)


async def test_a_server_error_is_retried_with_backoff_then_succeeds(asr: ASRServer) -> None:
    asr.state.flaky_failures = 2
    [outcome] = await transcribe_all(asr, [request("item_f", 0.5, model="flaky")], retries=2)
    assert outcome.error is None and len(asr.state.requests) == 3


async def test_a_failing_service_gives_a_failure_after_bounded_retries(asr: ASRServer) -> None:
    [outcome] = await transcribe_all(asr, [request("item_x", 0.5, model="fail")], retries=1)
    assert outcome.error_code == "asr_http_error" and "500" in outcome.error
    assert len(asr.state.requests) == 2


async def test_a_slow_service_times_out(asr: ASRServer) -> None:
    [outcome] = await transcribe_all(asr, [request("item_s", 0.5, model="slow")], timeout=0.5)
    assert outcome.error_code == "asr_timeout"


async def test_a_garbage_answer_is_a_failure(asr: ASRServer) -> None:
    [outcome] = await transcribe_all(asr, [request("item_g", 0.5, model="garbage")])
    assert outcome.error_code == "asr_bad_response"


async def test_too_many_waiting_segments_fail_at_once(asr: ASRServer) -> None:
    asr.state.delays[1] = 1.0
    outcomes = await transcribe_all(asr, [request(f"item_{n}", 0.3) for n in range(3)], max_pending=2)
    assert [o.error_code for o in outcomes] == [None, None, "asr_queue_full"]


@database_sync_to_async
def stored_transcriptions() -> list[dict]:
    return list(Transcription.objects.values("item__item_id", "item__text", "text", "status", "model", "language"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("model_manager")
async def test_a_spoken_turn_is_transcribed_sent_and_stored(asr: ASRServer, settings) -> None:
    settings.VOICE = {**settings.VOICE, "ASR_BASE_URL": asr.base_url, "ASR_API_KEY": "test-key"}
    async with connected(Dialect.GA) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "ok", "language": "en"}}},
                },
            }
        )
        await client.recv_until("session.updated")
        for event in append_events(read_pcm16("weather_en_24k.wav") + bytes(48000 * 2)):
            await client.send(event)
        committed = (await client.recv_until("input_audio_buffer.committed"))[-1]
        completed = (await client.recv_until("conversation.item.input_audio_transcription.completed"))[-1]
        assert completed["item_id"] == committed["item_id"]
        assert completed["transcript"].startswith("segment 1 of ")
        samples = int(completed["transcript"].split()[3])
        assert 4.0 * 24000 < samples < 6.5 * 24000, "the committed turn is the weather sentence"
        assert completed["usage"] == {"type": "duration", "seconds": pytest.approx(samples / 24000, abs=0.01)}
        await client.send({"type": "conversation.item.retrieve", "item_id": committed["item_id"]})
        retrieved = (await client.recv_until("conversation.item.retrieved"))[-1]
        assert retrieved["item"]["content"][0]["transcript"] == completed["transcript"]
    async with asyncio.timeout(TIMEOUT):
        while not (rows := await stored_transcriptions()):
            await asyncio.sleep(0.05)
    assert rows[0]["status"] == "completed" and rows[0]["item__text"] == completed["transcript"]
    assert rows[0]["language"] == "en" and rows[0]["item__item_id"] == committed["item_id"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("model_manager")
async def test_a_failed_transcription_reaches_the_client_and_the_store(asr: ASRServer, settings) -> None:
    settings.VOICE = {**settings.VOICE, "ASR_BASE_URL": asr.base_url, "ASR_API_KEY": "k", "ASR_RETRIES": 0}
    async with connected(Dialect.GA) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "fail"}, "turn_detection": None}},
                },
            }
        )
        await client.recv_until("session.updated")
        for event in append_events(read_pcm16("weather_en_24k.wav")[: 48 * 500]):
            await client.send(event)
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        failed = (await client.recv_until("conversation.item.input_audio_transcription.failed"))[-1]
        assert failed["error"]["code"] == "asr_http_error" and "500" in failed["error"]["message"]
    async with asyncio.timeout(TIMEOUT):
        while not (rows := await stored_transcriptions()):
            await asyncio.sleep(0.05)
    assert rows[0]["status"] == "failed"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("model_manager")
async def test_a_client_that_leaves_mid_transcription_still_gets_it_stored(asr: ASRServer, settings) -> None:
    settings.VOICE = {**settings.VOICE, "ASR_BASE_URL": asr.base_url, "ASR_API_KEY": "k"}
    asr.state.delays[1] = 1.0
    async with connected(Dialect.GA) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "ok"}, "turn_detection": None}},
                },
            }
        )
        await client.recv_until("session.updated")
        for event in append_events(read_pcm16("weather_en_24k.wav")[: 48 * 500]):
            await client.send(event)
        await client.send({"type": "input_audio_buffer.commit"})
        await client.recv_until("input_audio_buffer.committed")
    async with asyncio.timeout(TIMEOUT):
        while not (rows := await stored_transcriptions()):
            await asyncio.sleep(0.05)
    assert rows[0]["status"] == "completed" and rows[0]["text"].startswith("segment 1")


def test_no_asr_service_configured_means_no_transcription(settings) -> None:
    from voice.asr import NoTranscription, get_backend

    settings.VOICE = {**settings.VOICE, "ASR_BASE_URL": "", "ASR_API_KEY": ""}
    assert isinstance(get_backend(), NoTranscription)
    json.dumps(settings.VOICE)  # settings stay plain data
