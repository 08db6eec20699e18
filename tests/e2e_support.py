"""Client-side support for the tests that drive a real daphne over TCP, shared by their modules.

tests/test_e2e_sdk.py (the official openai SDK, both dialects) and tests/test_framework_contract.py
(a plain `websockets` client, connecting as voice-agent frameworks do) need the same things around
their tests: a live server started once per module whose log shows when a test failed, clients
that validate every received event strictly against the SDK's models (tests/strict.py) and wait for
an event type against a deadline, audio streamed in real time, the order of a response's events
checked as clients rely on it (docs/protocol-mapping.md, "One spoken turn, in order"), and the
server's SQLite database read back. Written once here, the test modules hold only their tests and
their own data, and a change to how a client waits or validates reaches both.

A test module takes the server with ``server = live_server_fixture(label, env)`` (``env`` a dict,
or a function of the fixture's request where it depends on other fixtures) and imports
``server_alive`` (autouse) so that each test first checks that daphne still runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI

from voice.protocol import Dialect
from voice.testing.live_server import LiveServer

from .conftest import TIMEOUT
from .helpers import read_pcm16, silence
from .strict import strict

STARTUP_TIMEOUT = 6 * TIMEOUT  # migrate + first load of the model on a busy 2-core CPU
MODEL = "gpt-realtime"
API_KEY = "sk-e2e"  # any Bearer key: the live server checks none
SPEECH = "weather_en_24k.wav"
# A client keeps streaming its microphone after it stops talking: the server ends the turn after
# silence_duration_ms (500 by default) of quiet audio.
TRAILING_SILENCE = silence(1000)
CHUNK_MS = 100
CHUNK_BYTES = 48 * CHUNK_MS  # pcm16 at 24 kHz mono

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


def live_server_fixture(
    label: str, env: dict[str, str] | Callable[[pytest.FixtureRequest], dict[str, str]]
) -> Callable[..., Any]:
    """A module-scoped ``server`` fixture: daphne with ``env`` in a fresh folder named ``label``,
    stopped after the module; its log is printed when one of the module's tests failed.

    ``env`` is the environment, or a function of the fixture's request that returns it: one whose
    values come from other module-scoped fixtures (``request.getfixturevalue``), such as the
    address of a local fake service, which then outlives the server."""

    @pytest.fixture(scope="module", name="server")
    def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
        live = LiveServer(tmp_path_factory.mktemp(label), env(request) if callable(env) else env)
        failed_before = request.session.testsfailed
        try:
            live.start(timeout=STARTUP_TIMEOUT)
            yield live
        finally:
            live.stop()
            if request.session.testsfailed > failed_before:
                _print_uncaptured(
                    request,
                    f"\n===== daphne log ({live.log_path}) =====\n{live.log()}\n===== end of daphne log =====",
                )

    return server


def _print_uncaptured(request: pytest.FixtureRequest, text: str) -> None:
    """Print past pytest's output capture, so that the log shows even from a fixture's teardown."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    context = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with context:
        print(text, flush=True)


@pytest.fixture(autouse=True)
def server_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before each test that takes the server: daphne is still running (else its log says why)."""
    if "server" in request.fixturenames:
        live: LiveServer = request.getfixturevalue("server")
        assert live.alive(), f"daphne is not running:\n{live.log()}"
    yield


# --- strict clients -----------------------------------------------------------------------------


class StrictClient:
    """A connection whose every received event is parsed from raw JSON, validated strictly and kept."""

    def __init__(self, dialect: Dialect, server: LiveServer) -> None:
        self.dialect = dialect
        self.server = server
        self.events: list[dict[str, Any]] = []

    async def _read(self) -> str | bytes:
        raise NotImplementedError

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self._read(), timeout)
        except TimeoutError:
            raise AssertionError(self.explain(f"no event within {timeout:.0f}s")) from None
        event = json.loads(raw)
        strict(event, self.dialect)
        self.events.append(event)
        return event

    async def expect(self, event_type: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The very next event, which must be of ``event_type``."""
        event = await self.recv(timeout)
        assert event["type"] == event_type, self.explain(f"expected {event_type}, got {json.dumps(event)[:600]}")
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

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def open_responses(self) -> int:
        types = self.types()
        return types.count("response.created") - types.count("response.done")

    def explain(self, what: str) -> str:
        return f"{what}; last events: {self.types()[-12:]}\n--- daphne log ---\n{self.server.log(6000)}"


class Session(StrictClient):
    """An openai SDK connection (GA or beta), read as raw JSON so that nothing is parsed leniently."""

    def __init__(self, conn: Any, dialect: Dialect, server: LiveServer) -> None:
        super().__init__(dialect, server)
        self.conn = conn

    @property
    def session_id(self) -> str:
        return self.events[0]["session"]["id"]

    async def _read(self) -> bytes:
        return await self.conn.recv_bytes()

    async def send_raw(self, text: str) -> None:
        if hasattr(self.conn, "send_raw"):  # GA connection
            await self.conn.send_raw(text)
        else:  # the beta connection has no send_raw: write to its websocket directly
            await self.conn._connection.send(text)


def sdk_client(server: LiveServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=API_KEY, base_url=f"{server.http_url}/v1", websocket_base_url=f"{server.ws_url}/v1")


def _sdk_connect(client: AsyncOpenAI, dialect: Dialect) -> Any:
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
            conn = await stack.enter_async_context(_sdk_connect(client, dialect))
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


class Socket(StrictClient):
    """A plain `websockets` GA connection, held as the voice-agent frameworks hold theirs."""

    def __init__(self, ws: websockets.ClientConnection, server: LiveServer) -> None:
        super().__init__(Dialect.GA, server)
        self.ws = ws

    async def _read(self) -> str | bytes:
        return await self.ws.recv()

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def close(self) -> None:
        await self.ws.close()


async def open_socket(server: LiveServer, query: str = f"?model={MODEL}") -> Socket:
    """No subprotocol offered, permessage-deflate offered, a Bearer key: as the frameworks connect."""
    ws = await websockets.connect(
        f"{server.ws_url}/v1/realtime{query}",
        additional_headers={"Authorization": f"Bearer {API_KEY}"},
        compression="deflate",
        open_timeout=TIMEOUT,
    )
    return Socket(ws, server)


@contextlib.asynccontextmanager
async def ga_socket(
    server: LiveServer, query: str = f"?model={MODEL}", *, wait_for_slot: bool = False
) -> AsyncIterator[Socket]:
    """A socket whose first event is session.created, closed on exit. With ``wait_for_slot``, a
    server_busy refusal (a slot freed elsewhere is not back yet) is retried until the deadline."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        socket = await open_socket(server, query)
        try:
            first = await socket.recv()
            if first["type"] == "session.created":
                yield socket
                return
            assert wait_for_slot and first["type"] == "error" and first["error"]["code"] == "server_busy", first
        finally:
            await socket.close()
        assert time.monotonic() < deadline, f"no slot came back within {TIMEOUT:.0f}s:\n{server.log(6000)}"
        await asyncio.sleep(0.1)  # polling for a slot, bounded by the deadline above


# --- audio in real time -------------------------------------------------------------------------


async def stream_audio(conn: Any, pcm: bytes) -> None:
    """Send ``pcm`` in real time over an SDK connection: one 100 ms append every 100 ms."""
    for offset in range(0, len(pcm), CHUNK_BYTES):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[offset : offset + CHUNK_BYTES]).decode())
        await asyncio.sleep(CHUNK_MS / 1000)  # real-time pacing


async def receive_while_streaming(session: Session, feed: asyncio.Task[None], timeout: float) -> None:
    """Receive until the audio has all been sent, at least one response is done and none is open."""
    deadline = time.monotonic() + timeout
    while not (feed.done() and session.open_responses() == 0 and "response.done" in session.types()):
        assert time.monotonic() < deadline, session.explain(f"the session did not settle within {timeout:.0f}s")
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


# --- checking a whole session's events ----------------------------------------------------------


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


# --- the server's database ----------------------------------------------------------------------


def query_db(db_path: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Rows from the server's SQLite file, opened read-only."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=TIMEOUT)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


async def ended_conversation(server: LiveServer, session_id: str) -> sqlite3.Row:
    """Poll the server's database until the conversation of ``session_id`` is closed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = query_db(server.db_path, "SELECT * FROM transcripts_conversation WHERE session_id = ?", session_id)
        if rows and rows[0]["ended_at"] is not None:
            return rows[0]
        assert time.monotonic() < deadline, (
            f"conversation {session_id} not ended in the database: {rows and dict(rows[0])}"
        )
        await asyncio.sleep(0.1)  # polling the database, bounded by the deadline above


def stored_items(server: LiveServer, conversation_pk: int) -> dict[str, sqlite3.Row]:
    """The stored items of one conversation, by item id."""
    rows = query_db(
        server.db_path, "SELECT * FROM transcripts_conversationitem WHERE conversation_id = ?", conversation_pk
    )
    return {row["item_id"]: row for row in rows}
