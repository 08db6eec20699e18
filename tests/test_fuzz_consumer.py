"""Property-based fuzzing through the whole connection: ASGI stack, consumer, runtime, model, store.

The same generated and mutated client events as test_fuzz.py (from the openai SDK's own request
types), plus binary frames, go to a real session over Channels' communicator, a few per
connection. After each, a probe (a retrieve of an item that does not exist, with an event id of
its own) marks the end of the answer: whatever came before it answers the fuzzed event. Nothing
may fail on the server (no `server_error`, no close), every error names the client's event id,
every event is strictly valid, and when the connection ends its slot, its gauge and its
conversation are given back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from hypothesis import given, settings
from hypothesis import strategies as st

from transcripts.models import Conversation
from voice import metrics
from voice.engine.manager import get_manager
from voice.protocol import Dialect

from .conftest import TIMEOUT
from .strict import strict
from .test_fuzz import EVENTS, FUZZ, RAW_TEXT, SILENT, broken_json, event_type, expected_event_id, mutated_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]

PROBE_ID = "fuzz_probe"
PROBE = json.dumps({"type": "conversation.item.retrieve", "item_id": "fuzz_no_such_item", "event_id": PROBE_ID})


def cases(dialect: Dialect) -> st.SearchStrategy[str | bytes]:
    texts = st.one_of(EVENTS[dialect].map(json.dumps), mutated_events(dialect), broken_json(dialect), RAW_TEXT)
    # Channels' communicator cannot send an empty frame (the protocol tests cover "").
    return st.one_of(texts, texts, texts, st.binary(min_size=1, max_size=64)).filter(lambda case: case != "")


async def one_connection(dialect: Dialect, sent: list[str | bytes]) -> None:
    from realtime_project.asgi import application

    headers = [(b"host", b"testserver")]
    if dialect is Dialect.BETA:
        headers.append((b"openai-beta", b"realtime=v1"))
    communicator = WebsocketCommunicator(application, "/v1/realtime", headers=headers)
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    try:
        greeting = [json.loads(await communicator.receive_from(timeout=TIMEOUT))]
        if dialect is Dialect.BETA:
            greeting.append(json.loads(await communicator.receive_from(timeout=TIMEOUT)))
        for event in greeting:
            strict(event, dialect)
        for case in sent:
            if isinstance(case, bytes):
                await communicator.send_to(bytes_data=case)
            else:
                await communicator.send_to(text_data=case)
            await communicator.send_to(text_data=PROBE)
            answer = await until_probe(communicator, dialect)
            check_answer(case, answer)
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def until_probe(communicator: WebsocketCommunicator, dialect: Dialect) -> list[dict[str, Any]]:
    events = []
    while True:
        output = await communicator.receive_output(timeout=TIMEOUT)
        assert output["type"] == "websocket.send", f"the server closed the connection: {output}"
        event = json.loads(output["text"])
        strict(event, dialect)
        if event["type"] == "error" and event["error"]["event_id"] == PROBE_ID:
            assert event["error"]["code"] == "item_retrieve_invalid_item_id", event
            return events
        events.append(event)


def check_answer(case: str | bytes, answer: list[dict[str, Any]]) -> None:
    shown = repr(case[:300])
    # Model output may interleave (a response the case opened); the case's own answer is the rest.
    own = [e for e in answer if not e["type"].startswith(("response.", "output_audio_buffer."))]
    errors = [e["error"] for e in own if e["type"] == "error"]
    for error in errors:
        assert error["type"] != "server_error", (error, shown)
        assert isinstance(error["code"], str) and error["code"], (error, shown)
        if isinstance(case, str) and error["code"] not in {"input_audio_buffer_overflow", "rate_limit_exceeded"}:
            assert error["event_id"] == expected_event_id(case), (error, shown)
    if isinstance(case, bytes):
        assert [e["code"] for e in errors] == ["invalid_event"], shown
    elif not answer:
        assert event_type(case) in SILENT, shown


def everything_given_back() -> None:
    manager = get_manager()
    assert manager is not None

    def in_use() -> tuple[int, float]:
        return sum(engine.slots_in_use for engine in manager.engines.values()), metrics.SESSIONS_LIVE._value.get()

    deadline = time.monotonic() + TIMEOUT
    while in_use() != (0, 0.0) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the slots, bounded by the deadline above
    assert in_use() == (0, 0.0)


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_fuzzed_connections_answer_everything_and_leak_nothing(dialect: Dialect, data: st.DataObject) -> None:
    sent = data.draw(st.lists(cases(dialect), min_size=1, max_size=4), label="sent")
    async_to_sync(one_connection)(dialect, sent)
    everything_given_back()
    assert not Conversation.objects.filter(ended_at__isnull=True).exists()
