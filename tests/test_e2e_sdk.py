"""End to end: a real daphne in a subprocess, driven by the official openai SDK in both dialects.

Everything goes over TCP as in production: the SDK's own handshake, real-time audio (100 ms chunks
every 100 ms), the server's real 80 ms tick, its own SQLite database (read back here with sqlite3).
Every event received is validated strictly against the SDK model of its type (tests/strict.py),
and the order of the events of each response is checked against what clients rely on
(docs/protocol-mapping.md, "One spoken turn, in order"). The server, the strict clients and those
checks live in tests/e2e_support.py, shared with tests/test_framework_contract.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from voice.protocol import Dialect
from voice.runtime.transport import CLOSE_TRY_AGAIN
from voice.testing.live_server import LiveServer

from .conftest import TIMEOUT
from .e2e_support import (
    MODEL,
    NAMES,
    SPEECH,
    TRAILING_SILENCE,
    SpeechRun,
    check_sequence,
    ended_conversation,
    ga_socket,
    live_server_fixture,
    open_socket,
    query_db,
    run_speech_session,
    sdk_session,
    stored_items,
    stream_audio,
    turn_detection_of,
    user_turn_events,
)
from .e2e_support import server_alive as server_alive  # autouse: each test first checks that daphne runs
from .helpers import read_pcm16

MAX_SESSIONS = 2

SERVER_ENV = {
    "RESPONSE_MAX_MS": "1600",
    "REALTIME_MAX_SESSIONS": str(MAX_SESSIONS),
    "LOG_LEVEL": "INFO",
}

server = live_server_fixture("e2e-server", SERVER_ENV)


# --- speech in, responses out -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def ga_speech(server: LiveServer) -> SpeechRun:
    return await run_speech_session(server, Dialect.GA)


@pytest.fixture(scope="module")
async def beta_speech(server: LiveServer) -> SpeechRun:
    return await run_speech_session(server, Dialect.BETA)


def assert_speech_run(run: SpeechRun) -> None:
    names = NAMES[run.dialect]
    types = [event["type"] for event in run.events]
    # Turn detection is on from the start (pipecat and others rely on it without asking).
    turn = turn_detection_of(run.events[0]["session"], run.dialect)
    assert turn is not None and turn["type"] == "server_vad" and turn["create_response"] is True
    assert types.index("session.updated") < types.index("response.created")
    traces = check_sequence(run.events, run.dialect)
    assert len(traces) == 1, "one question, one answer"
    assert types.count("response.created") == types.count("response.done") == 1
    # The user's turn, in order, right before the response that answers it; one item id throughout.
    first = traces[0]
    turn_events = user_turn_events(run.dialect)
    assert types[first.created - len(turn_events) : first.created] == turn_events, types[: first.created + 1]
    started, stopped, committed, *entered = run.events[first.created - len(turn_events) : first.created]
    user_item = entered[0]["item"]
    assert started["item_id"] == stopped["item_id"] == committed["item_id"] == user_item["id"]
    assert (user_item["role"], user_item["status"]) == ("user", "completed")
    assert user_item["content"] == [{"type": "input_audio", "transcript": None}]
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= len(read_pcm16(SPEECH)) // 48
    assert run.events[first.item_entered]["previous_item_id"] == user_item["id"]
    assert types[: first.created].count("input_audio_buffer.speech_started") == 1
    # The brief's ordering, spelled out for the first response.
    assert first.audio_deltas, "the first response carried no audio"
    assert any(trace.transcript_deltas for trace in traces), "no response carried transcript deltas"
    opener = [
        "response.created",
        "response.output_item.added",
        names["item_entered"],
        "response.content_part.added",
    ]
    assert [types[i] for i in (first.created, first.output_item_added, first.item_entered, first.part_added)] == opener
    assert first.part_added < first.audio_deltas[0]
    response = first.created_event["response"]
    assert response["conversation_id"] is not None and response["metadata"] is None
    if run.dialect is Dialect.GA:
        assert response["output_modalities"] == ["audio"]
    else:
        assert "audio" in response["modalities"]


async def test_ga_sdk_speech_gives_ordered_responses(ga_speech: SpeechRun) -> None:
    assert_speech_run(ga_speech)


async def test_beta_sdk_speech_gives_ordered_responses(beta_speech: SpeechRun) -> None:
    assert_speech_run(beta_speech)


# --- cancel -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])
async def test_response_create_then_cancel(server: LiveServer, dialect: Dialect) -> None:
    names = NAMES[dialect]
    metadata = {"purpose": "e2e-cancel", "dialect": dialect.value}
    async with sdk_session(server, dialect) as session:
        # Manual turns: only response.create opens a response.
        if dialect is Dialect.GA:
            await session.conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
        else:
            await session.conn.session.update(session={"turn_detection": None})
        updated = await session.expect("session.updated")
        turn = (
            updated["session"]["audio"]["input"]["turn_detection"]
            if dialect is Dialect.GA
            else updated["session"]["turn_detection"]
        )
        assert turn is None

        await session.conn.response.create(response={"metadata": metadata})
        created = await session.expect("response.created")
        assert created["response"]["metadata"] == metadata
        response_id = created["response"]["id"]
        await session.recv_until(names["audio_delta"])  # the model is talking

        await session.conn.response.cancel()
        done = (await session.recv_until("response.done"))[-1]
        assert done["response"]["id"] == response_id
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["type"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        assert done["response"]["metadata"] == metadata

        await session.conn.response.cancel(event_id="evt_e2e_cancel_again")
        error = await session.expect("error")
        assert error["error"]["code"] == "response_cancel_not_active"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["event_id"] == "evt_e2e_cancel_again"

        (trace,) = check_sequence(session.events, dialect)
        assert trace.audio_deltas
        assert session.types().count("response.done") == 1


# --- barge-in -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])
async def test_speaking_over_a_response_cancels_it(server: LiveServer, dialect: Dialect) -> None:
    """With the default turn detection, the user talking while the model answers ends the answer
    (cancelled, reason turn_detected), and the new turn gets its own response."""
    names = NAMES[dialect]
    async with sdk_session(server, dialect) as session:
        turn = turn_detection_of(session.events[0]["session"], dialect)
        assert turn is not None and turn["interrupt_response"] is True
        await session.conn.response.create()
        response_id = (await session.expect("response.created"))["response"]["id"]
        await session.recv_until(names["audio_delta"])  # the model is talking
        # The user starts again (a second and a half of the question), then is quiet.
        feed = asyncio.create_task(stream_audio(session.conn, read_pcm16(SPEECH)[: 48 * 1500] + TRAILING_SILENCE))
        try:
            interrupted = await session.recv_until("response.done")
            types = [event["type"] for event in interrupted]
            assert "input_audio_buffer.speech_started" in types, session.explain("no speech_started")
            barge_in = types.index("input_audio_buffer.speech_started")
            assert barge_in < types.index(names["audio_done"]) < types.index("response.output_item.done")
            done = interrupted[-1]["response"]
            assert done["id"] == response_id and done["status"] == "cancelled", done["status"]
            assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
            assert done["output"][0]["status"] == "incomplete"
            new_turn = interrupted[barge_in]["item_id"]

            # The interrupting turn is committed when the user falls quiet, and answered.
            answered = await session.recv_until("response.created", timeout=3 * TIMEOUT)
            turn_events = user_turn_events(dialect)[1:]  # speech_started came already
            assert [event["type"] for event in answered] == [*turn_events, "response.created"]
            assert answered[0]["item_id"] == answered[1]["item_id"] == new_turn
            assert answered[1]["previous_item_id"] == done["output"][0]["id"]
            await feed
            await session.recv_until("response.done", timeout=3 * TIMEOUT)
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
        traces = check_sequence(session.events, dialect)
        assert len(traces) == 2 and traces[0].id == response_id


# --- bad input ----------------------------------------------------------------------------------

ODD_BYTES = base64.b64encode(b"\x01\x02\x03").decode()


def bad_inputs(dialect: Dialect) -> list[tuple[str, str | dict[str, Any], str, str | None, str | None]]:
    """(label, raw text or event dict, expected code, expected param, event_id the error must echo)."""
    if dialect is Dialect.GA:
        pcmu = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    else:
        pcmu = {"input_audio_format": "g711_ulaw"}
    return [
        ("malformed JSON", '{"type": "session.update", "session": {', "invalid_event", None, None),
        ("not an object", "[1, 2, 3]", "invalid_event", None, None),
        ("no type", {"event_id": "evt_e2e_notype", "session": {}}, "invalid_event", "type", "evt_e2e_notype"),
        (
            "unknown type",
            {"type": "response.explode", "event_id": "evt_e2e_unknown"},
            "invalid_value",
            "type",
            "evt_e2e_unknown",
        ),
        (
            "missing item_id",
            {"type": "conversation.item.retrieve", "event_id": "evt_e2e_missing"},
            "missing_required_parameter",
            "item_id",
            "evt_e2e_missing",
        ),
        (
            "invalid base64",
            {"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%", "event_id": "evt_e2e_b64"},
            "invalid_value",
            "audio",
            "evt_e2e_b64",
        ),
        (
            "odd byte count",
            {"type": "input_audio_buffer.append", "audio": ODD_BYTES, "event_id": "evt_e2e_odd"},
            "invalid_value",
            "audio",
            "evt_e2e_odd",
        ),
        (
            "odd byte count, no event_id",
            {"type": "input_audio_buffer.append", "audio": ODD_BYTES},
            "invalid_value",
            "audio",
            None,
        ),
        (
            "unsupported input format",
            {"type": "session.update", "session": pcmu, "event_id": "evt_e2e_pcmu"},
            "unsupported_audio_format",
            "session.audio.input.format" if dialect is Dialect.GA else "session.input_audio_format",
            "evt_e2e_pcmu",
        ),
    ]


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])
async def test_bad_input_gives_error_events_and_the_session_goes_on(server: LiveServer, dialect: Dialect) -> None:
    async with sdk_session(server, dialect) as session:
        for label, payload, code, param, event_id in bad_inputs(dialect):
            if isinstance(payload, str):
                await session.send_raw(payload)
            else:
                await session.conn.send(payload)
            event = await session.expect("error")
            error = event["error"]
            assert set(error) == {"type", "code", "message", "param", "event_id"}, (label, error)
            assert error["type"] == "invalid_request_error", (label, error)
            assert error["code"] == code, (label, error)
            assert isinstance(error["message"], str) and error["message"], (label, error)
            assert error["param"] == param, (label, error)
            assert error["event_id"] == event_id, (label, error)

        # Still open, and the rejected update changed nothing.
        if dialect is Dialect.GA:
            await session.conn.session.update(session={"type": "realtime", "instructions": "still here"})
        else:
            await session.conn.session.update(session={"instructions": "still here"})
        updated = (await session.expect("session.updated"))["session"]
        assert updated["instructions"] == "still here"
        if dialect is Dialect.GA:
            assert updated["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        else:
            assert updated["input_audio_format"] == "pcm16"
        assert "response.created" not in session.types()


# --- a full server ------------------------------------------------------------------------------


async def test_third_connection_is_refused_until_a_slot_frees(server: LiveServer) -> None:
    async with ga_socket(server, wait_for_slot=True) as first, ga_socket(server, wait_for_slot=True) as second:
        third = await open_socket(server)
        try:
            refused = await third.recv()
            assert refused["type"] == "error", refused
            assert refused["error"]["code"] == "server_busy"
            assert refused["error"]["type"] == "server_error"
            assert refused["error"]["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(third.ws.recv(), TIMEOUT)
            assert closed.value.rcvd is not None, "the server did not close the refused socket"
            # Not 1011 (the server failing); daphne sends no close reason, so only the code tells.
            assert closed.value.rcvd.code == CLOSE_TRY_AGAIN, closed.value.rcvd
        finally:
            await third.close()

        # The two admitted sessions work as usual.
        await second.send({"type": "session.update", "session": {"type": "realtime", "instructions": "busy"}})
        assert (await second.recv())["type"] == "session.updated"

        # One leaves: its slot comes back for a newcomer.
        await first.close()
        async with ga_socket(server, wait_for_slot=True):
            pass


# --- persistence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("run_fixture", ["ga_speech", "beta_speech"], ids=["ga", "beta"])
async def test_finished_session_is_stored(server: LiveServer, run_fixture: str, request: pytest.FixtureRequest) -> None:
    run: SpeechRun = request.getfixturevalue(run_fixture)
    conversation = await ended_conversation(server, run.session_id)
    assert conversation["dialect"] == run.dialect.value
    assert conversation["requested_model"] == MODEL
    assert conversation["end_reason"].startswith("disconnect")
    assert conversation["conversation_id"].startswith("conv_")

    items = stored_items(server, conversation["id"])
    traces = check_sequence(run.events, run.dialect)
    [committed] = [event for event in run.events if event["type"] == "input_audio_buffer.committed"]
    assert committed["item_id"] in items, "the user's turn was not stored"
    assert items[committed["item_id"]]["role"] == "user" and items[committed["item_id"]]["audio_ms"] > 0
    spoken = [trace for trace in traces if trace.transcript.strip()]
    assert spoken, "no response said anything"
    for trace in traces:
        assert trace.item_id in items, f"assistant item {trace.item_id} not stored"
        row = items[trace.item_id]
        assert row["role"] == "assistant" and row["response_id"] == trace.id
        assert row["status"] == trace.events["done"]["response"]["output"][0]["status"]
        assert row["text"] == trace.transcript  # stored exactly as streamed
        assert row["audio_ms"] > 0
    assert any(items[trace.item_id]["text"] for trace in spoken)

    configs = query_db(
        server.db_path,
        "SELECT sequence, config FROM transcripts_sessionconfig WHERE conversation_id = ? ORDER BY sequence",
        conversation["id"],
    )
    assert len(configs) >= 2, [dict(row) for row in configs]
    initial, after_update = (json.loads(row["config"]) for row in configs[:2])
    assert initial["id"] == after_update["id"] == run.session_id
    assert initial["instructions"] != run.instructions
    assert after_update["instructions"] == run.instructions


async def test_abrupt_disconnect_mid_response_keeps_what_was_said(server: LiveServer) -> None:
    names = NAMES[Dialect.GA]
    pcm = read_pcm16(SPEECH) + TRAILING_SILENCE
    async with sdk_session(server, Dialect.GA) as session:
        feed = asyncio.create_task(stream_audio(session.conn, pcm))
        try:
            # Listen until an open response has said something, then drop the TCP connection.
            words = 0
            while words < 2:
                event = await session.recv()
                if event["type"] == "response.created":
                    words = 0
                elif event["type"] == names["transcript_delta"] and event["delta"].strip():
                    words += 1
            assert session.open_responses() == 1
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
        # No close frame, no FIN handshake: the server just sees the socket vanish (the SDK's own
        # close() would wait for the closing handshake). `_connection` is the SDK's websocket.
        session.conn._connection.transport.abort()
        traces = check_sequence(session.events, Dialect.GA, last_may_be_open=True)
        trace = traces[-1]
        assert trace.done is None and all(earlier.done is not None for earlier in traces[:-1])

    conversation = await ended_conversation(server, session.session_id)
    assert conversation["end_reason"] == "disconnect:1006"  # abnormal closure: the socket just went away
    items = stored_items(server, conversation["id"])
    assert trace.item_id in items, f"the interrupted assistant item was not stored: {list(items)}"
    row = items[trace.item_id]
    assert row["role"] == "assistant" and row["status"] == "incomplete" and row["response_id"] == trace.id
    heard = trace.transcript
    assert heard.strip(), "no words before the disconnect"
    assert row["text"].startswith(heard), (row["text"], heard)
    assert row["audio_ms"] > 0
