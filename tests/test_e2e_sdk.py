"""End to end: a real daphne in a subprocess, driven by the official openai SDK in both dialects.

Everything goes over TCP as in production: the SDK's own handshake, real-time audio (100 ms chunks
every 100 ms), the server's real 80 ms tick, its own SQLite database (read back here with sqlite3).
Every event received is validated strictly against the SDK model of its type (tests/strict.py),
and the order of the events of each response is checked against what clients rely on
(docs/protocol-mapping.md, "One spoken turn, in order").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from voice.consumers import CLOSE_TRY_AGAIN
from voice.protocol import Dialect
from voice.testing.live_server import LiveServer

from .conftest import TIMEOUT
from .helpers import read_pcm16, silence
from .strict import strict

STARTUP_TIMEOUT = 6 * TIMEOUT  # migrate + first load of the model on a busy 2-core CPU
MODEL = "gpt-realtime"
SPEECH = "weather_en_24k.wav"
# A client keeps streaming its microphone after it stops talking: the server ends the turn after
# silence_duration_ms (500 by default) of quiet audio.
TRAILING_SILENCE = silence(1000)
CHUNK_MS = 100
CHUNK_BYTES = 48 * CHUNK_MS  # pcm16 at 24 kHz mono
MAX_SESSIONS = 2

SERVER_ENV = {
    "RESPONSE_MAX_MS": "1600",
    "REALTIME_MAX_SESSIONS": str(MAX_SESSIONS),
    "LOG_LEVEL": "INFO",
}

# Wire names that differ between the dialects.
NAMES = {
    Dialect.GA: {
        "audio_delta": "response.output_audio.delta",
        "audio_done": "response.output_audio.done",
        "transcript_delta": "response.output_audio_transcript.delta",
        "transcript_done": "response.output_audio_transcript.done",
        "item_entered": "conversation.item.added",
        "audio_part": "output_audio",
    },
    Dialect.BETA: {
        "audio_delta": "response.audio.delta",
        "audio_done": "response.audio.done",
        "transcript_delta": "response.audio_transcript.delta",
        "transcript_done": "response.audio_transcript.done",
        "item_entered": "conversation.item.created",
        "audio_part": "audio",
    },
}


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("e2e-server"), SERVER_ENV)
    failed_before = request.session.testsfailed
    try:
        live.start(timeout=STARTUP_TIMEOUT)
        yield live
    finally:
        live.stop()
        if request.session.testsfailed > failed_before:
            _print_uncaptured(
                request, f"\n===== daphne log ({live.log_path}) =====\n{live.log()}\n===== end of daphne log ====="
            )


def _print_uncaptured(request: pytest.FixtureRequest, text: str) -> None:
    """Print past pytest's output capture, so that the log shows even from a fixture's teardown."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    context = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with context:
        print(text, flush=True)


@pytest.fixture(autouse=True)
def _server_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    if "server" in request.fixturenames:
        live: LiveServer = request.getfixturevalue("server")
        assert live.alive(), f"daphne is not running:\n{live.log()}"
    yield


# --- a strict client over the SDK ---------------------------------------------------------------


class Session:
    """An SDK connection whose every received event is parsed from raw JSON and validated strictly."""

    def __init__(self, conn: Any, dialect: Dialect, server: LiveServer) -> None:
        self.conn = conn
        self.dialect = dialect
        self.server = server
        self.events: list[dict[str, Any]] = []

    @property
    def session_id(self) -> str:
        return self.events[0]["session"]["id"]

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self.conn.recv_bytes(), timeout)
        except TimeoutError:
            raise AssertionError(self._explain(f"no event within {timeout:.0f}s")) from None
        event = json.loads(raw)
        strict(event, self.dialect)
        self.events.append(event)
        return event

    async def expect(self, event_type: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The very next event, which must be of ``event_type``."""
        event = await self.recv(timeout)
        assert event["type"] == event_type, self._explain(f"expected {event_type}, got {json.dumps(event)[:600]}")
        return event

    async def recv_until(self, event_type: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Every event up to and including the first of ``event_type``."""
        received = []
        deadline = time.monotonic() + timeout
        while True:
            event = await self.recv(max(deadline - time.monotonic(), 0.01))
            received.append(event)
            if event["type"] == event_type:
                return received

    async def send_raw(self, text: str) -> None:
        if hasattr(self.conn, "send_raw"):  # GA connection
            await self.conn.send_raw(text)
        else:  # the beta connection has no send_raw: write to its websocket directly
            await self.conn._connection.send(text)

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def open_responses(self) -> int:
        types = self.types()
        return types.count("response.created") - types.count("response.done")

    def _explain(self, what: str) -> str:
        return f"{what}; last events: {self.types()[-12:]}\n--- daphne log ---\n{self.server.log(6000)}"


def sdk_client(server: LiveServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="sk-e2e", base_url=f"{server.http_url}/v1", websocket_base_url=f"{server.ws_url}/v1")


def _connect(client: AsyncOpenAI, dialect: Dialect) -> Any:
    if dialect is Dialect.GA:
        return client.realtime.connect(model=MODEL)
    return client.beta.realtime.connect(model=MODEL)


@contextlib.asynccontextmanager
async def sdk_session(server: LiveServer, dialect: Dialect) -> AsyncIterator[Session]:
    """Connect with the SDK and check the greeting. A session slot that a previous test's
    connection still holds (the server frees it when it has processed that disconnect) answers
    server_busy; then connect again until the deadline."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(sdk_client(server))
            conn = await stack.enter_async_context(_connect(client, dialect))
            session = Session(conn, dialect, server)
            first = await session.recv()
            busy = first["type"] == "error" and first["error"]["code"] == "server_busy"
            if not busy:
                assert first["type"] == "session.created", first
                assert first["session"]["id"].startswith("sess_")
                if dialect is Dialect.BETA:
                    created = await session.expect("conversation.created")
                    assert created["conversation"]["id"].startswith("conv_")
                yield session
                return
        assert time.monotonic() < deadline, f"no free session slot within {TIMEOUT:.0f}s:\n{server.log(6000)}"
        await asyncio.sleep(0.1)  # polling for a slot, bounded by the deadline above


async def stream_audio(conn: Any, pcm: bytes) -> None:
    """Send ``pcm`` in real time: one 100 ms append every 100 ms."""
    for offset in range(0, len(pcm), CHUNK_BYTES):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[offset : offset + CHUNK_BYTES]).decode())
        await asyncio.sleep(CHUNK_MS / 1000)  # real-time pacing


async def receive_while_streaming(session: Session, feed: asyncio.Task[None], timeout: float) -> None:
    """Receive until the audio has all been sent, at least one response is done and none is open."""
    deadline = time.monotonic() + timeout
    while not (feed.done() and session.open_responses() == 0 and "response.done" in session.types()):
        assert time.monotonic() < deadline, session._explain(f"the session did not settle within {timeout:.0f}s")
        receiving = asyncio.ensure_future(session.recv(timeout))
        waiting_on: set[asyncio.Future[Any]] = {receiving} if feed.done() else {receiving, feed}
        done, _ = await asyncio.wait(waiting_on, return_when=asyncio.FIRST_COMPLETED)
        if receiving in done:
            receiving.result()
        else:  # the feed ended while nothing arrived: look at the stop condition again
            receiving.cancel()  # cancelling recv_bytes loses no data
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
    await feed  # re-raise a failed send


# --- checking a whole session's events ----------------------------------------------------------


@dataclass
class ResponseTrace:
    """The indexes (in the session's event list) of one response's events."""

    id: str
    created: int
    created_event: dict[str, Any]
    item_id: str | None = None
    output_item_added: int | None = None
    item_entered: int | None = None
    part_added: int | None = None
    audio_deltas: list[int] = field(default_factory=list)
    transcript_deltas: list[str] = field(default_factory=list)
    transcript_delta_at: list[int] = field(default_factory=list)
    audio_done: int | None = None
    transcript_done: int | None = None
    part_done: int | None = None
    item_done: int | None = None
    output_item_done: int | None = None
    done: int | None = None
    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def transcript(self) -> str:
        return "".join(self.transcript_deltas)


def check_sequence(
    events: list[dict[str, Any]], dialect: Dialect, *, last_may_be_open: bool = False
) -> list[ResponseTrace]:
    """Check the greeting and the order of every response's events; return one trace per response."""
    names = NAMES[dialect]
    types = [event["type"] for event in events]
    assert types[0] == "session.created", types[:3]
    if dialect is Dialect.BETA:
        assert types[1] == "conversation.created", types[:3]
    else:
        assert "conversation.created" not in types
    assert types.count("session.created") == 1

    traces: dict[str, ResponseTrace] = {}
    by_item: dict[str, ResponseTrace] = {}

    def trace_of(event: dict[str, Any]) -> ResponseTrace:
        response_id = event["response_id"] if "response_id" in event else event["response"]["id"]
        assert response_id in traces, f"{event['type']} for {response_id} before its response.created"
        trace = traces[response_id]
        assert trace.done is None, f"{event['type']} for {response_id} after its response.done"
        if "item_id" in event:
            assert event["item_id"] == trace.item_id, event
            assert event["output_index"] == 0 and event["content_index"] == 0, event
        return trace

    for index, event in enumerate(events):
        kind = event["type"]
        if kind == "response.created":
            response = event["response"]
            assert response["id"] not in traces, f"second response.created for {response['id']}"
            assert response["status"] == "in_progress" and response["output"] == [] and response["usage"] is None
            traces[response["id"]] = ResponseTrace(id=response["id"], created=index, created_event=event)
        elif kind == "response.output_item.added":
            trace = trace_of(event)
            assert trace.output_item_added is None
            assert event["item"]["role"] == "assistant" and event["item"]["status"] == "in_progress"
            trace.output_item_added, trace.item_id = index, event["item"]["id"]
            by_item[trace.item_id] = trace
        elif kind == names["item_entered"] and event["item"]["id"] in by_item:
            trace = by_item[event["item"]["id"]]
            assert trace.item_entered is None and trace.done is None
            assert "previous_item_id" in event
            trace.item_entered = index
        elif kind == "response.content_part.added":
            trace = trace_of(event)
            assert trace.part_added is None
            assert event["part"] == {"type": "audio", "transcript": ""}, event["part"]
            trace.part_added = index
        elif kind == names["audio_delta"]:
            trace = trace_of(event)
            pcm = base64.b64decode(event["delta"], validate=True)
            assert pcm and len(pcm) % 2 == 0
            trace.audio_deltas.append(index)
        elif kind == names["transcript_delta"]:
            trace = trace_of(event)
            trace.transcript_deltas.append(event["delta"])
            trace.transcript_delta_at.append(index)
        elif kind == names["audio_done"]:
            trace = trace_of(event)
            assert trace.audio_done is None
            trace.audio_done = index
        elif kind == names["transcript_done"]:
            trace = trace_of(event)
            assert trace.transcript_done is None
            assert event["transcript"] == trace.transcript
            trace.transcript_done = index
        elif kind == "response.content_part.done":
            trace = trace_of(event)
            assert trace.part_done is None
            assert event["part"] == {"type": "audio", "transcript": trace.transcript}, event["part"]
            trace.part_done = index
        elif kind == "conversation.item.done" and event["item"]["id"] in by_item:
            trace = by_item[event["item"]["id"]]
            assert dialect is Dialect.GA and trace.item_done is None and trace.done is None
            trace.item_done = index
            trace.events["item_done"] = event
        elif kind == "response.output_item.done":
            trace = trace_of(event)
            assert trace.output_item_done is None
            trace.output_item_done = index
            trace.events["output_item_done"] = event
        elif kind == "response.done":
            trace = trace_of(event)
            trace.done = index
            trace.events["done"] = event

    result = list(traces.values())
    for number, trace in enumerate(result):
        if trace.done is None:
            assert last_may_be_open and number == len(result) - 1, f"response {trace.id} never got its response.done"
            continue
        _check_closed_response(trace, dialect)
    return result


def _check_closed_response(trace: ResponseTrace, dialect: Dialect) -> None:
    names = NAMES[dialect]
    # The openers, in order, before any delta.
    assert trace.output_item_added is not None and trace.item_entered is not None and trace.part_added is not None
    assert trace.created < trace.output_item_added < trace.item_entered < trace.part_added
    for at in trace.audio_deltas + trace.transcript_delta_at:
        assert trace.part_added < at
    # The closers, in order, after every delta.
    assert trace.audio_done is not None and trace.transcript_done is not None and trace.part_done is not None
    assert all(at < trace.audio_done for at in trace.audio_deltas)
    assert all(at < trace.transcript_done for at in trace.transcript_delta_at)
    assert trace.audio_done < trace.transcript_done < trace.part_done
    closers = [trace.part_done, trace.output_item_done, trace.done]
    if dialect is Dialect.GA:
        closers.insert(1, trace.item_done)
    else:
        assert trace.item_done is None
    assert None not in closers and closers == sorted(closers), closers  # type: ignore[type-var]
    # The final objects carry the transcript that was streamed, and no audio bytes.
    response = trace.events["done"]["response"]
    assert response["id"] == trace.id
    assert response["status"] in {"completed", "incomplete", "cancelled"}, response["status"]
    assert response["usage"] is not None and response["usage"]["total_tokens"] >= 0
    assert response["metadata"] == trace.created_event["response"]["metadata"]
    (item,) = response["output"]
    assert item["id"] == trace.item_id and item["role"] == "assistant"
    assert item["status"] == ("completed" if response["status"] == "completed" else "incomplete")
    assert item["content"] == [{"type": names["audio_part"], "transcript": trace.transcript}], item["content"]
    assert trace.events["output_item_done"]["item"] == item
    if dialect is Dialect.GA:
        assert trace.events["item_done"]["item"]["content"] == item["content"]


# --- speech in, responses out -------------------------------------------------------------------


@dataclass
class SpeechRun:
    dialect: Dialect
    session_id: str
    events: list[dict[str, Any]]
    instructions: str


async def run_speech_session(server: LiveServer, dialect: Dialect) -> SpeechRun:
    """session.update, then the weather question and a second of quiet streamed in real time,
    until the responses settle. GA relies on the default turn detection, beta asks for it."""
    pcm = read_pcm16(SPEECH) + TRAILING_SILENCE
    instructions = f"E2E {dialect.value}: answer briefly."
    async with sdk_session(server, dialect) as session:
        if dialect is Dialect.GA:
            update = {"type": "realtime", "instructions": instructions}
        else:
            update = {
                "instructions": instructions,
                "modalities": ["audio", "text"],
                "input_audio_format": "pcm16",
                "turn_detection": {"type": "server_vad"},
            }
        await session.conn.session.update(session=update)
        updated = await session.expect("session.updated")
        assert updated["session"]["instructions"] == instructions
        assert updated["session"]["id"] == session.session_id
        feed = asyncio.create_task(stream_audio(session.conn, pcm))
        try:
            await receive_while_streaming(session, feed, timeout=len(pcm) / 48000 + 3 * TIMEOUT)
        finally:
            feed.cancel()
        return SpeechRun(dialect, session.session_id, session.events, instructions)


@pytest.fixture(scope="module")
async def ga_speech(server: LiveServer) -> SpeechRun:
    return await run_speech_session(server, Dialect.GA)


@pytest.fixture(scope="module")
async def beta_speech(server: LiveServer) -> SpeechRun:
    return await run_speech_session(server, Dialect.BETA)


def turn_detection_of(session: dict[str, Any], dialect: Dialect) -> dict[str, Any] | None:
    return session["audio"]["input"]["turn_detection"] if dialect is Dialect.GA else session["turn_detection"]


def user_turn_events(dialect: Dialect) -> list[str]:
    """What server turn detection sends for one spoken turn, before the response (docs/protocol-mapping.md)."""
    entered = (
        ["conversation.item.added", "conversation.item.done"]
        if dialect is Dialect.GA
        else ["conversation.item.created"]
    )
    return [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        *entered,
    ]


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
            assert "input_audio_buffer.speech_started" in types, session._explain("no speech_started")
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


async def _raw_connect(server: LiveServer) -> websockets.ClientConnection:
    return await websockets.connect(
        f"{server.ws_url}/v1/realtime?model={MODEL}",
        additional_headers={"Authorization": "Bearer sk-e2e"},
        open_timeout=TIMEOUT,
    )


async def _raw_recv(ws: websockets.ClientConnection) -> dict[str, Any]:
    event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    strict(event, Dialect.GA)
    return event


async def _raw_session(server: LiveServer) -> websockets.ClientConnection:
    """A GA connection that got a slot, retrying while a slot freed elsewhere is not back yet."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        ws = await _raw_connect(server)
        first = await _raw_recv(ws)
        if first["type"] == "session.created":
            return ws
        assert first["type"] == "error" and first["error"]["code"] == "server_busy", first
        await ws.close()
        assert time.monotonic() < deadline, f"no slot came back within {TIMEOUT:.0f}s:\n{server.log(6000)}"
        await asyncio.sleep(0.1)  # polling for a slot, bounded by the deadline above


async def test_third_connection_is_refused_until_a_slot_frees(server: LiveServer) -> None:
    first = await _raw_session(server)
    second = await _raw_session(server)
    try:
        third = await _raw_connect(server)
        try:
            refused = await _raw_recv(third)
            assert refused["type"] == "error", refused
            assert refused["error"]["code"] == "server_busy"
            assert refused["error"]["type"] == "server_error"
            assert refused["error"]["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(third.recv(), TIMEOUT)
            assert closed.value.rcvd is not None, "the server did not close the refused socket"
            # Not 1011 (the server failing); daphne sends no close reason, so only the code tells.
            assert closed.value.rcvd.code == CLOSE_TRY_AGAIN, closed.value.rcvd
        finally:
            await third.close()

        # The two admitted sessions work as usual.
        await second.send(
            json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "busy"}})
        )
        assert (await _raw_recv(second))["type"] == "session.updated"

        # One leaves: its slot comes back for a newcomer.
        await first.close()
        fourth = await _raw_session(server)
        await fourth.close()
    finally:
        await first.close()
        await second.close()


# --- persistence ---------------------------------------------------------------------------------


def _query(db_path: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=TIMEOUT)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


async def _ended_conversation(server: LiveServer, session_id: str) -> sqlite3.Row:
    """Poll the server's database until the conversation of ``session_id`` is closed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = _query(server.db_path, "SELECT * FROM transcripts_conversation WHERE session_id = ?", session_id)
        if rows and rows[0]["ended_at"] is not None:
            return rows[0]
        assert time.monotonic() < deadline, (
            f"conversation {session_id} not ended in the database: {rows and dict(rows[0])}"
        )
        await asyncio.sleep(0.1)  # polling the database, bounded by the deadline above


def _items(server: LiveServer, conversation_pk: int) -> dict[str, sqlite3.Row]:
    rows = _query(
        server.db_path, "SELECT * FROM transcripts_conversationitem WHERE conversation_id = ?", conversation_pk
    )
    return {row["item_id"]: row for row in rows}


@pytest.mark.parametrize("run_fixture", ["ga_speech", "beta_speech"], ids=["ga", "beta"])
async def test_finished_session_is_stored(server: LiveServer, run_fixture: str, request: pytest.FixtureRequest) -> None:
    run: SpeechRun = request.getfixturevalue(run_fixture)
    conversation = await _ended_conversation(server, run.session_id)
    assert conversation["dialect"] == run.dialect.value
    assert conversation["requested_model"] == MODEL
    assert conversation["end_reason"].startswith("disconnect")
    assert conversation["conversation_id"].startswith("conv_")

    items = _items(server, conversation["id"])
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

    configs = _query(
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

    conversation = await _ended_conversation(server, session.session_id)
    assert conversation["end_reason"] == "disconnect:1006"  # abnormal closure: the socket just went away
    items = _items(server, conversation["id"])
    assert trace.item_id in items, f"the interrupted assistant item was not stored: {list(items)}"
    row = items[trace.item_id]
    assert row["role"] == "assistant" and row["status"] == "incomplete" and row["response_id"] == trace.id
    heard = trace.transcript
    assert heard.strip(), "no words before the disconnect"
    assert row["text"].startswith(heard), (row["text"], heard)
    assert row["audio_ms"] > 0
