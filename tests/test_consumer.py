"""The consumer on the demo checkpoint, driven in-process through WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from transcripts.models import Conversation
from voice.protocol import Dialect

from .conftest import TIMEOUT
from .helpers import append_events, connected, read_pcm16, silence, stream
from .strict import strict

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]


BOTH = pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])
SPEECH = "weather_en_24k.wav"


def user_item_events(dialect: Dialect) -> list[str]:
    if dialect is Dialect.GA:
        return ["conversation.item.added", "conversation.item.done"]
    return ["conversation.item.created"]


def turn_detection(session: dict, dialect: Dialect) -> dict | None:
    return session["audio"]["input"]["turn_detection"] if dialect is Dialect.GA else session["turn_detection"]


@BOTH
async def test_server_turn_detection_is_on_by_default(dialect: Dialect) -> None:
    """Clients such as pipecat stream the mic and wait for the server's turns without configuring them."""
    async with connected(dialect) as client:
        turn = turn_detection(client.received[0]["session"], dialect)
        assert turn["type"] == "server_vad"
        assert turn["create_response"] is True and turn["interrupt_response"] is True
        assert turn["silence_duration_ms"] == 500 and turn["prefix_padding_ms"] == 300


@BOTH
async def test_speech_in_gives_a_full_response_out(dialect: Dialect) -> None:
    async with connected(dialect) as client:
        await stream(client, read_pcm16(SPEECH) + silence(1000))  # the mic keeps streaming after the question
        events = await client.recv_until("response.done")
        types = [e["type"] for e in events]
        vad = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
        turn = [*vad, *user_item_events(dialect), "response.created"]
        # The turn's events in order, then the response, with nothing in between.
        assert [t for t in types[: types.index("response.created") + 1] if t in turn] == turn, types
        assert types.index("response.created") == types.index("input_audio_buffer.committed") + len(turn) - 3
        started, stopped, committed = (events[types.index(t)] for t in vad)
        user_item = events[types.index("input_audio_buffer.committed") + 1]["item"]
        assert started["item_id"] == stopped["item_id"] == committed["item_id"] == user_item["id"]
        assert (user_item["role"], user_item["content"]) == ("user", [{"type": "input_audio", "transcript": None}])
        # The question is spoken from about 0.2 s to 4.7 s of the file.
        assert 0 <= started["audio_start_ms"] <= 300 and 4400 <= stopped["audio_end_ms"] <= 4960

        audio_delta = "response.output_audio.delta" if dialect is Dialect.GA else "response.audio.delta"
        first_delta = types.index(audio_delta)
        for opener in ("response.created", "response.output_item.added", "response.content_part.added"):
            assert types.index("input_audio_buffer.committed") < types.index(opener) < first_delta
        entered = events[types.index("response.output_item.added") + 1]
        assert entered["previous_item_id"] == user_item["id"]
        # The demo model never falls silent: RESPONSE_MAX_MS ends its turn, as completed.
        response = events[-1]["response"]
        assert (response["status"], response["status_details"]) == ("completed", None)
        assert types.count("response.created") == 1


@BOTH
async def test_speaking_over_a_response_cancels_it(dialect: Dialect) -> None:
    """Barge-in: speech during a response ends it as cancelled / turn_detected; the new turn is answered."""
    speech = read_pcm16(SPEECH)
    async with connected(dialect) as client:
        # Two questions with a short pause: the second starts while the first is being answered.
        await stream(client, speech + silence(600) + speech[: 48 * 1500] + silence(1000))
        first = await client.recv_until("response.done")
        types = [e["type"] for e in first]
        response_id = first[types.index("response.created")]["response"]["id"]
        assert first[-1]["response"]["id"] == response_id
        barge_in = [i for i, t in enumerate(types) if t == "input_audio_buffer.speech_started"][1]
        audio_delta = "response.output_audio.delta" if dialect is Dialect.GA else "response.audio.delta"
        assert types.index("response.created") < types.index(audio_delta) < barge_in  # the model was speaking
        assert barge_in < types.index("response.content_part.done") < types.index("response.output_item.done")
        assert audio_delta not in types[barge_in:]
        done = first[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        assert done["output"][0]["status"] == "incomplete"

        second = await client.recv_until("response.done")
        types = [e["type"] for e in second]
        new_turn = first[barge_in]["item_id"]
        turn = ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed", *user_item_events(dialect)]
        assert types[: len(turn) + 1] == [*turn, "response.created"]
        assert second[0]["item_id"] == second[1]["item_id"] == new_turn
        assert second[types.index("response.created")]["response"]["id"] != response_id
        assert second[-1]["response"]["status"] == "completed"


async def wait_for(predicate, what: str) -> None:
    """Poll a condition that another task or thread makes true, up to TIMEOUT."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@database_sync_to_async
def stored_conversation(session_id: str) -> dict | None:
    conversation = Conversation.objects.filter(session_id=session_id).first()
    if conversation is None:
        return None
    return {
        "ended": conversation.ended_at is not None,
        "model_name": conversation.model_name,
        "items": list(conversation.items.values("role", "status", "text", "item_id")),
        "configs": list(conversation.configs.values_list("config", flat=True)),
    }


async def test_the_demo_model_is_named_in_the_session() -> None:
    async with connected(Dialect.GA) as client:
        assert client.received[0]["session"]["model"] == "moshi-demo-random-weights"


async def test_a_session_is_stored_and_closed(model_manager) -> None:
    async with connected(Dialect.GA) as client:
        session_id = client.received[0]["session"]["id"]
        manual = {"type": "realtime", "instructions": "Be brief.", "audio": {"input": {"turn_detection": None}}}
        await client.send({"type": "session.update", "session": manual})
        await client.recv_until("session.updated")
        for event in append_events(read_pcm16(SPEECH)[: 48 * 1000]):
            await client.send(event)
        await client.send({"type": "input_audio_buffer.commit"})
        await client.recv_until("input_audio_buffer.committed")
        await client.send({"type": "response.create"})
        done = await client.recv_until("response.done")
        transcript = done[-1]["response"]["output"][0]["content"][0]["transcript"]
        # Turn detection is off: the speech gave no VAD events, only the manual commit.
        assert not any(e["type"].startswith("input_audio_buffer.speech_") for e in client.received)

    async def ended() -> bool:
        stored = await stored_conversation(session_id)
        return bool(stored and stored["ended"])

    await wait_for(ended, "the conversation to be closed")
    stored = await stored_conversation(session_id)
    assert stored["model_name"] == "moshi-demo-random-weights"
    assert [c["instructions"] for c in stored["configs"]][-1] == "Be brief."
    assert len(stored["configs"]) == 2  # the one at connect, then the update
    roles = [item["role"] for item in stored["items"]]
    assert "user" in roles and "assistant" in roles
    assistant = next(item for item in stored["items"] if item["role"] == "assistant")
    assert assistant["text"] == transcript and assistant["text"].strip()


async def test_a_client_that_drops_mid_response_loses_nothing_and_frees_its_slot(model_manager) -> None:
    engine = model_manager.engines["sft"]
    async with connected(Dialect.GA) as client:
        session_id = client.received[0]["session"]["id"]
        await client.send({"type": "response.create"})
        while True:  # hang up as soon as the model has said something
            event = await client.recv()
            if event["type"] == "response.output_audio_transcript.delta":
                break
        assert engine.slots_in_use >= 1

    async def stored_partial() -> bool:
        stored = await stored_conversation(session_id)
        return bool(stored and stored["ended"] and any(i["role"] == "assistant" for i in stored["items"]))

    await wait_for(stored_partial, "the partial answer to be stored")
    stored = await stored_conversation(session_id)
    assistant = next(item for item in stored["items"] if item["role"] == "assistant")
    assert assistant["status"] == "incomplete" and assistant["text"]

    async def all_free() -> bool:
        return engine.slots_in_use == 0

    await wait_for(all_free, "every slot to be free")


async def test_bad_frames_get_errors_and_the_session_goes_on(settings) -> None:
    settings.VOICE = {**settings.VOICE, "MAX_MESSAGE_BYTES": 1000}
    async with connected(Dialect.GA) as client:
        await client.communicator.send_to(bytes_data=b"\x00\x01")
        assert (await client.recv())["error"]["code"] == "invalid_event"
        await client.send({"type": "input_audio_buffer.append", "audio": "A" * 2000})
        error = (await client.recv())["error"]
        assert error["code"] == "invalid_event" and "1000 bytes" in error["message"]
        await client.send({"type": "session.update", "session": {"type": "realtime"}})
        assert (await client.recv())["type"] == "session.updated"


async def test_an_unknown_model_type_is_refused_with_a_reason() -> None:
    from realtime_project.asgi import application

    communicator = WebsocketCommunicator(
        application, "/v1/realtime?model_type=huge", headers=[(b"host", b"testserver")]
    )
    connected_ok, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected_ok
    event = json.loads(await communicator.receive_from(timeout=TIMEOUT))
    strict(event, Dialect.GA)
    assert event["error"]["code"] == "invalid_model" and "sft" in event["error"]["message"]
    assert (await communicator.receive_output(timeout=TIMEOUT))["type"] == "websocket.close"


async def test_a_full_server_says_so_and_slots_come_back(model_manager) -> None:
    from realtime_project.asgi import application

    engine = model_manager.engines["sft"]
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(engine.batch_size):
            await stack.enter_async_context(connected(Dialect.GA))
        refused = WebsocketCommunicator(application, "/v1/realtime", headers=[(b"host", b"testserver")])
        assert (await refused.connect(timeout=TIMEOUT))[0]
        event = json.loads(await refused.receive_from(timeout=TIMEOUT))
        strict(event, Dialect.GA)
        assert event["error"]["code"] == "server_busy"
        closing = await refused.receive_output(timeout=TIMEOUT)
        assert closing["type"] == "websocket.close" and closing["code"] == 4013

    async def all_free() -> bool:
        return engine.slots_in_use == 0

    await wait_for(all_free, "every slot to be free")
    async with connected(Dialect.GA):
        pass


def test_the_landing_page_and_readiness_say_whether_a_model_is_loaded(client, model_manager) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b"/v1/realtime" in page.content and b"moshi-demo-random-weights" in page.content
    ready = client.get("/healthz").json()
    assert ready == {
        "ready": True,
        "device": "cpu",
        "models": {"sft": "moshi-demo-random-weights"},
        "slots": {"sft": {"total": 4, "free": 4}},
    }


async def test_an_unknown_websocket_path_is_refused_cleanly() -> None:
    from realtime_project.asgi import application

    communicator = WebsocketCommunicator(application, "/v1", headers=[(b"host", b"testserver")])
    connected_ok, _ = await communicator.connect(timeout=TIMEOUT)
    assert not connected_ok
