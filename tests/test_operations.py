"""Operating the server: Prometheus metrics (behind their token), readiness, and sessions that go idle."""

from __future__ import annotations

import json
import re

import pytest
from channels.testing import WebsocketCommunicator

from voice.protocol import Dialect

from .conftest import TIMEOUT
from .helpers import append_events, connected, read_pcm16
from .strict import strict

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]

METRICS_TOKEN = "scrape-token-for-tests"
SCRAPER = {"authorization": f"Bearer {METRICS_TOKEN}"}
HOST = [(b"host", b"testserver")]


@pytest.fixture
def metrics_token(settings) -> str:
    settings.VOICE = {**settings.VOICE, "METRICS_TOKEN": METRICS_TOKEN}
    return METRICS_TOKEN


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_sessions_steps_latency_and_errors(async_client, metrics_token) -> None:
    before = (await async_client.get("/metrics", headers=SCRAPER)).content.decode()
    errors_before = (
        metric(before, "realtime_errors_total", '{code="invalid_event"}') if "invalid_event" in before else 0
    )
    async with connected(Dialect.GA) as client:
        for event in append_events(read_pcm16("weather_en_24k.wav")[: 48 * 800]):
            await client.send(event)
        await client.recv_until("input_audio_buffer.speech_started")  # the model has stepped on our audio
        await client.send("not json")
        assert (await client.recv())["error"]["code"] == "invalid_event"
        during = (await async_client.get("/metrics", headers=SCRAPER)).content.decode()
        assert metric(during, "realtime_sessions_live") >= 1
        assert metric(during, "realtime_slots", '{model_type="sft",state="in_use"}') >= 1
    after = (await async_client.get("/metrics", headers=SCRAPER)).content.decode()
    assert metric(after, "realtime_model_ready") == 1.0
    assert metric(after, "realtime_model_step_seconds_count", '{model_type="sft"}') > 0
    assert metric(after, "realtime_frame_latency_seconds_count") > 0
    assert metric(after, "realtime_frame_overhead_seconds_count") > 0
    assert metric(after, "realtime_errors_total", '{code="invalid_event"}') == errors_before + 1
    assert 'realtime_input_queue_frames{model_type="sft"}' in after
    assert metric(after, "realtime_event_loop_stall_seconds_count") > 0


def test_metrics_without_a_configured_token_are_closed_and_say_what_to_set(client) -> None:
    response = client.get("/metrics")  # pytest-django runs with DEBUG off
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert "REALTIME_METRICS_TOKEN" in response.content.decode()
    assert b"realtime_" not in response.content


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {METRICS_TOKEN}", "Bearer ", METRICS_TOKEN]
)
def test_metrics_refuse_a_missing_or_wrong_token(client, metrics_token, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization is not None else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"realtime_" not in response.content


def test_metrics_answer_the_right_token(client, metrics_token) -> None:
    response = client.get("/metrics", headers={"authorization": f"bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    assert "realtime_model_ready" in response.content.decode()


def test_metrics_are_open_under_debug_with_no_token_but_a_token_set_counts_there_too(client, settings) -> None:
    settings.DEBUG = True
    assert client.get("/metrics").status_code == 200
    settings.VOICE = {**settings.VOICE, "METRICS_TOKEN": METRICS_TOKEN}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=SCRAPER).status_code == 200


async def test_an_idle_session_is_told_and_closed_cleanly(settings) -> None:
    from realtime_project.asgi import application

    settings.VOICE = {**settings.VOICE, "IDLE_TIMEOUT_S": 0.5}
    communicator = WebsocketCommunicator(application, "/v1/realtime", headers=HOST)
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    assert json.loads(await communicator.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    event = json.loads(await communicator.receive_from(timeout=TIMEOUT))
    strict(event, Dialect.GA)
    assert event["error"]["code"] == "session_idle_timeout"
    closing = await communicator.receive_output(timeout=TIMEOUT)
    assert closing == {"type": "websocket.close", "code": 1000}
    await communicator.disconnect()


async def test_no_slot_leaks_when_many_sessions_come_and_go(model_manager) -> None:
    """Sessions that hang up at every stage, cleanly or abruptly, all give their slot back."""
    import asyncio

    from realtime_project.asgi import application

    engine = model_manager.engines["sft"]
    pcm = read_pcm16("weather_en_24k.wav")[: 48 * 400]

    async def one_session(round_number: int) -> None:
        communicator = WebsocketCommunicator(application, "/v1/realtime", headers=HOST)
        assert (await communicator.connect(timeout=TIMEOUT))[0]
        stage = round_number % 4
        if stage >= 1:
            for event in append_events(pcm):
                await communicator.send_to(text_data=json.dumps(event))
        if stage >= 2:
            await communicator.send_to(text_data=json.dumps({"type": "response.create"}))
        if stage == 3:
            await communicator.send_to(text_data="{broken")
        await asyncio.sleep(0.01 * stage)
        await communicator.disconnect(code=1000 if round_number % 2 else 1006)

    for batch in range(6):
        await asyncio.gather(*(one_session(batch * 4 + n) for n in range(engine.batch_size)))
    async with asyncio.timeout(TIMEOUT):
        while engine.slots_in_use:
            await asyncio.sleep(0.05)
    assert all(slot is None for slot in engine.slots)
