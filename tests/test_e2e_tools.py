"""Tools through the companion model, end to end: the official openai SDK, a real daphne, a real
local chat-completions server (tests/companion_server.py) and a real local ASR (tests/asr_server.py).

The server process asks the companion over HTTP exactly as it would ask OpenAI, Groq or vLLM, and
transcribes the user's turns with the ASR service so that the companion reads them. Each test
scripts what the companion answers (a tool call, streamed text, an HTTP error, an error in the
middle of the stream, an answer slower than COMPANION_TIMEOUT_S), streams real speech in real time
where a turn is needed, and checks what a user of the SDK sees, event by event and validated
strictly against the SDK's models: the function_call items as OpenAI streams them, the companion's
text said by Moshi (its audio deltas, and an output transcript that is that text verbatim), the
failures as `error` + `response.done` failed (Realtime) or `response.failed` (Live), usage; and what
was asked and answered, stored in the server's SQLite database with the conversation
(docs/protocol-mapping.md, "Tools through the companion"; docs/live-api.md, "Delegation").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import AsyncOpenAI

from voice.protocol import Dialect
from voice.protocol.tools import SPEECH_NOTE
from voice.testing.live_server import LiveServer

from .asr_server import ASRServer
from .companion_server import MODEL as COMPANION_MODEL
from .companion_server import CompanionServer, Reply
from .conftest import TIMEOUT
from .e2e_support import (
    NAMES,
    SPEECH,
    TRAILING_SILENCE,
    Session,
    check_sequence,
    ended_conversation,
    live_server_fixture,
    query_db,
    receive_while_streaming,
    sdk_session,
    stored_items,
    stream_audio,
    user_turn_events,
)
from .e2e_support import server_alive as server_alive  # autouse: each test first checks that daphne runs
from .helpers import read_pcm16
from .strict_live import strict_live_nested
from .tools_data import CHAT_WEATHER, FUNCTION_CALL_STREAM, WEATHER, text_reply_stream

COMPANION_TIMEOUT_S = 3  # the server's COMPANION_TIMEOUT_S: a slower answer is a companion_timeout
INSTRUCTIONS = "You are the weather desk. Use get_weather for forecasts."
ARGUMENTS = json.dumps({"city": "Paris"})
CALL_ID = "call_fake0"  # the id tests/companion_server.py gives its first tool call
TOOL_RESULT = json.dumps({"forecast": "sunny", "celsius": 24})
ANSWER = "It is sunny in Paris today."  # the companion's text once it has the tool's result
GREETING = "Welcome to the weather desk."  # its text when there is nothing to call
RECOVERED = "Sorry for the wait, I am back."
COMMENTARY = "Let me check the forecast for you."
ACKNOWLEDGEMENT = "One moment."  # what Moshi says when a Responses delegation waits (delegation.py)


# --- the servers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def companion() -> Iterator[CompanionServer]:
    with CompanionServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def asr() -> Iterator[ASRServer]:
    with ASRServer() as fake:
        yield fake


def server_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """daphne's env: a companion (retries off, a short timeout) and an ASR service, both local fakes."""
    companion: CompanionServer = request.getfixturevalue("companion")
    asr: ASRServer = request.getfixturevalue("asr")
    return {
        **companion.settings(COMPANION_TIMEOUT_S=str(COMPANION_TIMEOUT_S), COMPANION_RETRIES="0"),
        "ASR_BASE_URL": asr.base_url,
        "ASR_API_KEY": "e2e-key",
        "ASR_MODEL": "ok",
        "REALTIME_MAX_SESSIONS": "2",
        "RESPONSE_MAX_MS": "15000",
        "LOG_LEVEL": "INFO",
    }


server = live_server_fixture("e2e-tools", server_env)


def weather_desk(body: dict[str, Any]) -> Reply:
    """The companion as a weather desk: once a tool result is in the chat it answers in words; with
    tools to offer it calls get_weather for Paris; else it greets."""
    if any(message.get("role") == "tool" for message in body["messages"]):
        return Reply(text=ANSWER)
    if body.get("tools"):
        return Reply(tool_calls=[("get_weather", {"city": "Paris"})])
    return Reply(text=GREETING)


@dataclass
class Script:
    """The module's companion server, as this test scripts it: the requests since the test began."""

    server: CompanionServer
    start: int

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return self.server.bodies[self.start :]

    def script(self, *replies: Reply) -> None:
        self.server.script(*replies)


@pytest.fixture
def scripted(companion: CompanionServer) -> Iterator[Script]:
    """A fresh script for each test: nothing queued, the weather desk answering."""
    with companion.lock:
        companion.replies.clear()
    companion.respond = weather_desk
    yield Script(companion, len(companion.bodies))
    with companion.lock:
        companion.replies.clear()
    companion.respond = None


# --- shared checks ------------------------------------------------------------------------------


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def function_call_events(dialect: Dialect) -> list[str]:
    """One function_call output item, as OpenAI streams it (short arguments: one delta)."""
    names = [
        "response.output_item.added",
        NAMES[dialect]["item_entered"],
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    if dialect is Dialect.GA:
        names.append("conversation.item.done")
    return [*names, "response.output_item.done"]


def check_function_call_response(
    events: list[dict[str, Any]], dialect: Dialect, previous_item_id: str | None
) -> dict[str, Any]:
    """``events`` (response.created to response.done) are one completed response holding one
    get_weather call, streamed as OpenAI does; its final function_call item."""
    assert types_of(events) == ["response.created", *function_call_events(dialect), "response.done"], types_of(events)
    created, added, entered, *rest = events
    response_id = created["response"]["id"]
    assert created["response"]["status"] == "in_progress" and created["response"]["output"] == []
    item = added["item"]
    assert (added["response_id"], added["output_index"]) == (response_id, 0)
    assert {key: item[key] for key in ("type", "status", "name", "call_id", "arguments")} == {
        "type": "function_call",
        "status": "in_progress",
        "name": "get_weather",
        "call_id": CALL_ID,
        "arguments": "",
    }, item
    assert entered["item"]["id"] == item["id"] and entered["item"]["type"] == "function_call"
    if previous_item_id is not None:
        assert entered["previous_item_id"] == previous_item_id
    deltas = [e for e in rest if e["type"] == "response.function_call_arguments.delta"]
    (arguments_done,) = [e for e in rest if e["type"] == "response.function_call_arguments.done"]
    for event in [*deltas, arguments_done]:
        assert (event["response_id"], event["item_id"], event["output_index"], event["call_id"]) == (
            response_id,
            item["id"],
            0,
            CALL_ID,
        ), event
    assert "".join(e["delta"] for e in deltas) == ARGUMENTS
    assert arguments_done["arguments"] == ARGUMENTS
    if dialect is Dialect.GA:
        assert arguments_done["name"] == "get_weather"
        (item_done,) = [e for e in rest if e["type"] == "conversation.item.done"]
        assert item_done["item"]["status"] == "completed" and item_done["item"]["arguments"] == ARGUMENTS
    output_done = rest[-2]
    final = output_done["item"]
    assert output_done["output_index"] == 0 and final["id"] == item["id"]
    assert (final["status"], final["arguments"], final["call_id"], final["name"]) == (
        "completed",
        ARGUMENTS,
        CALL_ID,
        "get_weather",
    )
    response = events[-1]["response"]
    assert response["id"] == response_id and response["status"] == "completed"
    assert response["status_details"] is None
    assert response["output"] == [final]
    # The companion's tokens (tests/companion_server.py: 12 prompt, 7 completion); no audio was said.
    usage = response["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (12, 7, 19), usage
    assert usage["input_token_details"]["text_tokens"] == 12
    assert usage["output_token_details"] == {"text_tokens": 7, "audio_tokens": 0}
    return final


def check_spoken_response(session: Session, created_at: int, text: str) -> dict[str, Any]:
    """The response whose response.created is ``session.events[created_at]`` (the last one, closed)
    said ``text``: its message item in the order clients rely on, audio deltas, and a transcript that
    is ``text`` verbatim; the companion's usage. Its response.done."""
    greeting = 1 if session.dialect is Dialect.GA else 2
    events = session.events[:greeting] + session.events[created_at:]
    (trace,) = check_sequence(events, session.dialect)
    response = trace.events["done"]["response"]
    assert response["status"] == "completed", session.explain(f"the spoken response ended {response['status']}")
    assert trace.audio_deltas, "the spoken answer carried no audio"
    assert trace.transcript == text, session.explain(f"transcript {trace.transcript!r}, wanted {text!r}")
    usage = response["usage"]
    audio_tokens = usage["output_token_details"]["audio_tokens"]
    assert audio_tokens == 8 * len(trace.audio_deltas) > 0, usage
    assert usage["input_tokens"] == usage["input_token_details"]["text_tokens"] == 12
    assert usage["output_token_details"]["text_tokens"] == 7
    assert usage["output_tokens"] == 7 + audio_tokens and usage["total_tokens"] == 12 + 7 + audio_tokens
    return trace.events["done"]


def session_update(dialect: Dialect, **fields: Any) -> dict[str, Any]:
    """A session.update for the dialect; beta asks for server turn detection (GA has it by default)."""
    if dialect is Dialect.GA:
        return {"type": "realtime", **fields}
    return {
        "modalities": ["audio", "text"],
        "input_audio_format": "pcm16",
        "turn_detection": {"type": "server_vad"},
        **fields,
    }


async def stored_calls(server: LiveServer, session_id: str, count: int) -> tuple[sqlite3.Row, list[sqlite3.Row]]:
    """The ended conversation of ``session_id`` and every CompanionCall row stored for it, once
    ``count`` distinct calls (request ids) are there."""
    conversation = await ended_conversation(server, session_id)
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = query_db(
            server.db_path,
            "SELECT * FROM transcripts_companioncall WHERE conversation_id = ? ORDER BY id",
            conversation["id"],
        )
        if len(once(rows)) >= count:
            return conversation, rows
        assert time.monotonic() < deadline, f"{len(rows)} companion calls stored for {session_id}, wanted {count}"
        await asyncio.sleep(0.1)  # polling the database, bounded by the deadline above


def once(rows: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """The first row stored for each companion request id, in order."""
    seen: set[str] = set()
    return [row for row in rows if not (row["request_id"] in seen or seen.add(row["request_id"]))]


def stored_twice(rows: list[sqlite3.Row]) -> list[str]:
    """Companion request ids stored more than once: each call must be one row."""
    ids = [row["request_id"] for row in rows]
    return sorted({request_id for request_id in ids if ids.count(request_id) > 1})


def loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


DIALECTS = pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])


# --- Realtime: a spoken turn, a tool call, the tool's result spoken ------------------------------


@DIALECTS
async def test_realtime_turn_becomes_a_function_call_and_the_result_is_spoken(
    server: LiveServer, scripted: Script, asr: ASRServer, dialect: Dialect
) -> None:
    names = NAMES[dialect]
    asked_asr = len(asr.state.requests)
    pcm = read_pcm16(SPEECH) + TRAILING_SILENCE
    async with sdk_session(server, dialect) as session:
        await session.conn.session.update(
            session=session_update(dialect, instructions=INSTRUCTIONS, tools=[WEATHER], tool_choice="auto")
        )
        updated = await session.expect("session.updated")
        assert [tool["name"] for tool in updated["session"]["tools"]] == ["get_weather"]

        # The question, spoken in real time: turn detection commits it and opens a response that
        # the companion answers with a tool call once the ASR has the user's words.
        feed = asyncio.create_task(stream_audio(session.conn, pcm))
        try:
            await receive_while_streaming(session, feed, timeout=len(pcm) / 48000 + 3 * TIMEOUT)
        finally:
            feed.cancel()
        types = session.types()
        assert types.count("response.created") == types.count("response.done") == 1, session.explain("one response")
        first = types.index("response.created")
        turn = user_turn_events(dialect)
        assert types[first - len(turn) : first] == turn, session.explain("the user's turn, then the response")
        user_item = session.events[first - 1 if dialect is Dialect.BETA else first - 2]["item"]
        assert (user_item["role"], user_item["content"]) == ("user", [{"type": "input_audio", "transcript": None}])
        # The client did not ask for transcription: it hears nothing of it, though the companion reads it.
        assert not [t for t in types if t.startswith("conversation.item.input_audio_transcription")]
        call = check_function_call_response(session.events[first:], dialect, user_item["id"])
        first_response_id = session.events[first]["response"]["id"]

        # The companion was asked once, with the user's words, the instructions and the tool.
        (turn_body,) = scripted.bodies
        heard = asr.state.requests[asked_asr:]
        assert len(heard) == 1 and 4.0 < heard[0].wav_frames / 24000 < 6.5, "the ASR got the spoken question"
        transcript = f"segment {asked_asr + 1} of {heard[0].wav_frames} samples"  # what the fake ASR says
        assert turn_body["model"] == COMPANION_MODEL and turn_body["stream"] is True
        assert turn_body["tools"] == [CHAT_WEATHER] and turn_body["tool_choice"] == "auto"
        system, *chat = turn_body["messages"]
        assert system == {"role": "system", "content": f"{INSTRUCTIONS}\n\n{SPEECH_NOTE}"}
        assert chat == [{"role": "user", "content": transcript}]

        # The client runs its tool, gives the result and asks for the next response.
        output_item = {"type": "function_call_output", "call_id": CALL_ID, "output": TOOL_RESULT}
        await session.conn.conversation.item.create(item=output_item)
        entered = await session.expect(names["item_entered"])
        entered_at = len(session.events) - 1
        assert entered["item"]["type"] == "function_call_output" and entered["previous_item_id"] == call["id"]
        await session.conn.response.create()
        await session.recv_until("response.done", timeout=3 * TIMEOUT)
        types = session.types()
        second = len(types) - 1 - types[::-1].index("response.created")
        assert session.events[second]["response"]["id"] != first_response_id
        between = types[entered_at + 1 : second]
        assert set(between) <= {"conversation.item.done"}, between  # GA: the client's item is final
        done = check_spoken_response(session, second, ANSWER)
        answer_item_id = done["response"]["output"][0]["id"]

        # The second request: the chat so far, the call and its result as chat-completions puts them.
        assert len(scripted.bodies) == 2
        tool_body = scripted.bodies[1]
        assert tool_body["tools"] == [CHAT_WEATHER] and tool_body["tool_choice"] == "auto"
        assert tool_body["messages"] == [
            system,
            {"role": "user", "content": transcript},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
                ],
            },
            {"role": "tool", "tool_call_id": CALL_ID, "content": TOOL_RESULT},
        ]
        assert [e for e in session.events if e["type"] == "error"] == []
        session_id = session.session_id
        second_response_id = session.events[second]["response"]["id"]

    # What was asked and answered is stored with the conversation.
    conversation, rows = await stored_calls(server, session_id, 2)
    calls = once(rows)
    assert len(calls) == 2
    assert [c["purpose"] for c in calls] == ["turn", "tool_output"]
    assert [c["status"] for c in calls] == ["completed", "completed"]
    assert all(c["model"] == COMPANION_MODEL and loads(c["tools"]) == ["get_weather"] for c in calls)
    assert all((c["prompt_tokens"], c["completion_tokens"], c["total_tokens"]) == (12, 7, 19) for c in calls)
    assert [loads(c["context"])["response_id"] for c in calls] == [first_response_id, second_response_id]
    assert calls[0]["asked"] == transcript and calls[0]["text"] == ""
    assert loads(calls[0]["tool_calls"]) == [{"call_id": CALL_ID, "name": "get_weather", "arguments": ARGUMENTS}]
    assert loads(calls[0]["tool_choice"]) == "auto"
    assert calls[1]["asked"] == f"(tool output) {TOOL_RESULT}" and calls[1]["text"] == ANSWER
    assert loads(calls[1]["tool_calls"]) == [] and calls[1]["message_count"] == 4
    items = stored_items(server, conversation["id"])
    assert items[user_item["id"]]["text"] == transcript, "the words the companion read are stored"
    assert (items[call["id"]]["item_type"], items[call["id"]]["text"]) == ("function_call", ARGUMENTS)
    assert items[entered["item"]["id"]]["text"] == TOOL_RESULT
    answer = items[answer_item_id]
    assert (answer["role"], answer["text"], answer["response_id"]) == ("assistant", ANSWER, second_response_id)
    # Each call and each transcription is stored once.
    transcriptions = query_db(
        server.db_path,
        "SELECT t.text FROM transcripts_transcription t JOIN transcripts_conversationitem i ON i.id = t.item_id "
        "WHERE i.conversation_id = ? AND i.item_id = ?",
        conversation["id"],
        user_item["id"],
    )
    duplicates = {
        "companion calls stored twice": stored_twice(rows),
        "transcription rows of the user's turn": [row["text"] for row in transcriptions],
    }
    assert duplicates == {"companion calls stored twice": [], "transcription rows of the user's turn": [transcript]}


# --- Realtime: response.create with instructions, tool_choice ------------------------------------


@DIALECTS
async def test_realtime_tool_choice_and_instructions_through_response_create(
    server: LiveServer, scripted: Script, dialect: Dialect
) -> None:
    async with sdk_session(server, dialect) as session:
        await session.conn.session.update(session=session_update(dialect, instructions=INSTRUCTIONS, tools=[WEATHER]))
        await session.expect("session.updated")

        # tool_choice "required" is accepted with a companion, and the companion is told so.
        await session.conn.response.create(response={"tool_choice": "required"})
        events = await session.recv_until("response.done", timeout=2 * TIMEOUT)
        check_function_call_response(events, dialect, None)
        (required,) = scripted.bodies
        assert required["tool_choice"] == "required" and required["tools"] == [CHAT_WEATHER]

        if dialect is Dialect.GA:  # a named function (GA's tool_choice object)
            choice = {"type": "function", "name": "get_weather"}
            await session.conn.response.create(response={"tool_choice": choice, "tools": [WEATHER]})
            events = await session.recv_until("response.done", timeout=2 * TIMEOUT)
            check_function_call_response(events, dialect, None)
            named = scripted.bodies[-1]
            assert named["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
            assert named["tools"] == [CHAT_WEATHER]

        # Instructions and no tools: the companion writes the words, Moshi says them verbatim.
        asked = len(scripted.bodies)
        await session.conn.response.create(response={"instructions": "Greet the user.", "tools": []})
        await session.recv_until("response.done", timeout=3 * TIMEOUT)
        created_at = len(session.types()) - 1 - session.types()[::-1].index("response.created")
        check_spoken_response(session, created_at, GREETING)
        greet = scripted.bodies[asked]
        assert len(scripted.bodies) == asked + 1
        assert "tools" not in greet and "tool_choice" not in greet
        assert greet["messages"][0] == {
            "role": "system",
            "content": f"{INSTRUCTIONS}\n\nGreet the user.\n\n{SPEECH_NOTE}",
        }
        # The calls nobody answered are left out: the chat is one the API accepts.
        assert all(m["role"] == "system" for m in greet["messages"]), greet["messages"]
        assert [e for e in session.events if e["type"] == "error"] == []


# --- Realtime: failures, a slow answer, and the session goes on ----------------------------------


@DIALECTS
async def test_realtime_companion_failures_fail_the_response_and_the_session_goes_on(
    server: LiveServer, scripted: Script, dialect: Dialect
) -> None:
    scripted.script(
        Reply(status=500),
        Reply(text="never said", stream_error=True),
        Reply(text="too late", delay=COMPANION_TIMEOUT_S + 3),
        Reply(text=RECOVERED),
    )
    failures = [
        ("companion_error", "HTTP 500: scripted failure"),
        ("companion_error", "scripted failure"),
        ("companion_timeout", f"within {COMPANION_TIMEOUT_S}s"),
    ]
    async with sdk_session(server, dialect) as session:
        for code, said in failures:
            began = time.monotonic()
            await session.conn.response.create(response={"instructions": "Say hello."})
            events = await session.recv_until("response.done", timeout=COMPANION_TIMEOUT_S + TIMEOUT)
            took = time.monotonic() - began
            assert types_of(events) == ["response.created", "error", "response.done"], session.explain(code)
            error = events[1]["error"]
            assert (error["type"], error["code"]) == ("server_error", code), error
            assert said in error["message"], error
            response = events[2]["response"]
            assert response["id"] == events[0]["response"]["id"]
            assert (response["status"], response["output"]) == ("failed", [])
            details = response["status_details"]
            assert details["type"] == "failed"
            assert (details["error"]["type"], details["error"]["code"]) == ("server_error", code), details
            if details["error"].get("message") is not None:
                assert details["error"]["message"] == error["message"]
            if code == "companion_timeout":  # never a hang: the companion's own timeout, no more
                assert COMPANION_TIMEOUT_S - 0.5 < took < COMPANION_TIMEOUT_S + 4, took
            else:
                assert took < COMPANION_TIMEOUT_S, took

        # The session goes on: the next response is answered and said.
        await session.conn.response.create(response={"instructions": "Say hello."})
        await session.recv_until("response.done", timeout=3 * TIMEOUT)
        created_at = len(session.types()) - 1 - session.types()[::-1].index("response.created")
        check_spoken_response(session, created_at, RECOVERED)
        assert len(scripted.bodies) == 4
        session_id = session.session_id

    _, rows = await stored_calls(server, session_id, 4)
    calls = once(rows)
    assert [(c["status"], c["error_code"]) for c in calls] == [
        ("failed", "companion_error"),
        ("failed", "companion_error"),
        ("failed", "companion_timeout"),
        ("completed", ""),
    ]
    assert all(c["purpose"] == "response.create" for c in calls)
    assert "HTTP 500" in calls[0]["error"] and calls[3]["text"] == RECOVERED
    assert stored_twice(rows) == [], "each companion call is stored once"


# --- Live API -----------------------------------------------------------------------------------

LIVE_WEATHER = {**WEATHER, "strict": True}
BACKEND_INSTRUCTIONS = "You are the weather backend."
RESPONSES = {
    "type": "responses",
    "responses": {"model": "gpt-5-mini", "instructions": BACKEND_INSTRUCTIONS, "tools": [LIVE_WEATHER]},
}
LIVE_FRAME_BYTES = 3840  # 80 ms of pcm16 at 24 kHz


class LiveClient:
    """The SDK's Live connection, read raw: every event validated strictly (nested Responses events too)."""

    def __init__(self, conn: Any, server: LiveServer) -> None:
        self.conn = conn
        self.server = server
        self.events: list[dict[str, Any]] = []

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self.conn.recv_bytes(), timeout)
        except TimeoutError:
            raise AssertionError(self.explain(f"no event within {timeout:.0f}s")) from None
        event = json.loads(raw)
        strict_live_nested(event)
        self.events.append(event)
        return event

    async def until(self, done: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT) -> dict[str, Any]:
        """Receive until an event ``done`` accepts; that event."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.recv(max(deadline - time.monotonic(), 0.01))
            if done(event):
                return event

    async def until_type(self, event_type: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.until(lambda e: e["type"] == event_type, timeout)

    async def until_nested(self, nested_type: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.until(lambda e: e["type"] == "response.event" and e["event"]["type"] == nested_type, timeout)

    async def until_said(self, text: str, since: int, timeout: float = 3 * TIMEOUT) -> str:
        """Receive until the output transcript from event ``since`` on holds ``text``; that transcript."""
        deadline = time.monotonic() + timeout
        while text not in (said := self.output_transcript(since)):
            assert time.monotonic() < deadline, self.explain(f"{text!r} not said; the transcript: {said!r}")
            await self.recv(max(deadline - time.monotonic(), 0.01))
        return said

    def output_transcript(self, since: int = 0) -> str:
        return "".join(e["delta"] for e in self.events[since:] if e["type"] == "session.output_transcript.delta")

    def nested(self, since: int = 0) -> list[dict[str, Any]]:
        """The response.event wrappers from ``since`` on."""
        return [e for e in self.events[since:] if e["type"] == "response.event"]

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "error"]

    def explain(self, what: str) -> str:
        kinds = [
            e["type"] if e["type"] != "response.event" else f"response.event:{e['event']['type']}"
            for e in self.events
            if e["type"] != "session.output_audio.delta"
        ]
        return f"{what}; last events: {kinds[-16:]}\n--- daphne log ---\n{self.server.log(6000)}"


@contextlib.asynccontextmanager
async def live_session(server: LiveServer, **session: Any) -> AsyncIterator[LiveClient]:
    """A started Live session (its session.started received). A slot a previous test's connection
    still holds answers server_busy: connect again until the deadline."""
    deadline = time.monotonic() + TIMEOUT
    client = AsyncOpenAI(
        api_key="sk-live-e2e", base_url=f"{server.http_url}/v1", websocket_base_url=f"{server.ws_url}/v1", max_retries=0
    )
    while True:
        async with client.live.connect(max_retries=0) as conn:
            live = LiveClient(conn, server)
            await conn.session.start(session=session, event_id="start")
            first = await live.recv()
            if not (first["type"] == "error" and first["error"]["code"] == "server_busy"):
                assert first["type"] == "session.started", live.explain(json.dumps(first)[:600])
                yield live
                return
        assert time.monotonic() < deadline, f"no free session slot within {TIMEOUT:.0f}s:\n{server.log(6000)}"
        await asyncio.sleep(0.1)  # polling for a slot, bounded by the deadline above


async def microphone(conn: Any, pcm: bytes) -> None:
    """``pcm`` in real time (one 80 ms append every 80 ms), then silence, as a microphone keeps sending."""
    offset = 0
    while True:
        chunk = pcm[offset : offset + LIVE_FRAME_BYTES] if offset < len(pcm) else bytes(LIVE_FRAME_BYTES)
        offset += LIVE_FRAME_BYTES
        await conn.session.input_audio.append(audio=base64.b64encode(chunk).decode())
        await asyncio.sleep(0.08)  # real-time pacing


async def close_live(live: LiveClient) -> str:
    """session.close, then session.closed; the session's id."""
    await live.conn.session.close()
    closed = await live.until_type("session.closed")
    assert closed["reason"] == "close_requested"
    return str(closed["session"]["id"])


def nested_types(wrappers: list[dict[str, Any]]) -> list[str]:
    return [w["event"]["type"] for w in wrappers]


async def test_live_delegation_calls_a_function_then_the_result_is_spoken(
    server: LiveServer, scripted: Script, asr: ASRServer
) -> None:
    asked_asr = len(asr.state.requests)
    speech = read_pcm16(SPEECH)
    async with live_session(server, model="gpt-live-1", delegation=RESPONSES) as live:
        resource = live.events[0]["session"]
        assert resource["delegation"]["type"] == "responses"
        assert [t["name"] for t in resource["delegation"]["responses"]["tools"]] == ["get_weather"]
        assert not [e for e in live.events if e["type"] == "info"], "an ASR is configured: delegation can trigger"
        mic = asyncio.create_task(microphone(live.conn, speech))
        try:
            # The user's turn ends, the ASR has its words, the companion calls get_weather.
            created = await live.until_type("session.delegation.created", timeout=len(speech) / 48000 + 2 * TIMEOUT)
            at = len(live.events) - 1
            completed = await live.until_nested("response.completed")
            delegation = created["delegation"]
            assert delegation["id"].startswith("dlg_") and delegation["type"] == "delegation"
            assert delegation["target"] == "responses" and delegation["response_id"].startswith("resp_")
            assert 0 < created["offset_ms"] <= len(speech) // 48 + 2000, created
            first = live.nested(at)
            assert nested_types(first) == FUNCTION_CALL_STREAM, live.explain("the delegated function call")
            assert all(w["delegation_id"] == delegation["id"] for w in first)
            assert [w["event"]["sequence_number"] for w in first] == list(range(6))
            opened, added, delta, arguments_done, item_done, _ = (w["event"] for w in first)
            assert opened["response"]["id"] == completed["event"]["response"]["id"] == delegation["response_id"]
            assert opened["response"]["status"] == "in_progress"
            call = added["item"]
            assert (call["type"], call["name"], call["call_id"], call["arguments"], call["status"]) == (
                "function_call",
                "get_weather",
                CALL_ID,
                "",
                "in_progress",
            )
            assert delta["delta"] == arguments_done["arguments"] == ARGUMENTS
            assert item_done["item"]["status"] == "completed" and item_done["item"]["arguments"] == ARGUMENTS
            assert completed["event"]["response"]["status"] == "completed"
            assert completed["event"]["response"]["usage"]["input_tokens"] == 12
            assert completed["event"]["response"]["usage"]["output_tokens"] == 7
            # The waiting delegation is acknowledged aloud.
            await live.until_said(ACKNOWLEDGEMENT, at)

            # response.create before the outputs: refused, naming the missing call; nothing else changes.
            await live.conn.response.create(event_id="too_soon")
            refused = await live.until_type("error")
            assert refused["error"]["code"] == "function_call_outputs_required", refused
            assert CALL_ID in refused["error"]["message"] and refused["client_event_id"] == "too_soon"

            # The tool's result, then the next response: the companion's words, said by Moshi.
            output = {"type": "function_call_output", "call_id": CALL_ID, "output": TOOL_RESULT}
            await live.conn.response.item.create(item=output, event_id="result")
            await live.conn.response.create(event_id="go_on")
            reply_at = len(live.events)
            opened = await live.until_nested("response.created")
            assert opened["client_event_id"] == "go_on" and opened["delegation_id"] == delegation["id"]
            assert opened["event"]["response"]["id"] != delegation["response_id"]
            done = await live.until_nested("response.completed")
            second = live.nested(reply_at)
            kinds = nested_types(second)
            words = kinds.count("response.output_text.delta")
            assert kinds == ["response.created", *text_reply_stream(words)], live.explain("the delegated reply")
            assert all(w["delegation_id"] == delegation["id"] for w in second)
            text = "".join(w["event"]["delta"] for w in second if w["event"]["type"] == "response.output_text.delta")
            assert text == ANSWER
            assert done["event"]["response"]["usage"]["total_tokens"] == 19
            said = await live.until_said(ANSWER, reply_at)
            assert said.count(ANSWER) == 1
            audio = [e for e in live.events[reply_at:] if e["type"] == "session.output_audio.delta"]
            assert any(base64.b64decode(e["delta"]).strip(b"\0") for e in audio), "the answer was not heard"
            user_words = "".join(e["delta"] for e in live.events if e["type"] == "session.input_transcript.delta")
            assert user_words.strip().startswith("segment"), user_words
            assert [e["client_event_id"] for e in live.errors()] == ["too_soon"]
        finally:
            mic.cancel()
        session_id = await close_live(live)

    heard = asr.state.requests[asked_asr:]
    assert heard and heard[0].wav_rate == 24000
    assert scripted.bodies, "the companion was never asked"
    turn_body = scripted.bodies[0]
    assert turn_body["tool_choice"] == "auto"
    assert turn_body["tools"] == [{**CHAT_WEATHER, "function": {**CHAT_WEATHER["function"], "strict": True}}]
    assert turn_body["messages"][0]["role"] == "system"
    assert turn_body["messages"][0]["content"].startswith(BACKEND_INSTRUCTIONS)
    assert any(m["role"] == "user" and m["content"].startswith("segment") for m in turn_body["messages"])
    tool_body = scripted.bodies[1]
    tool_messages = tool_body["messages"]
    at_call = next(i for i, m in enumerate(tool_messages) if m.get("tool_calls"))
    assert tool_messages[at_call]["tool_calls"] == [
        {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
    ]
    assert tool_messages[at_call + 1] == {"role": "tool", "tool_call_id": CALL_ID, "content": TOOL_RESULT}

    _, rows = await stored_calls(server, session_id, 2)
    calls = once(rows)
    assert [c["purpose"] for c in calls[:2]] == ["delegation", "tool_output"]
    assert all(c["status"] == "completed" and c["model"] == COMPANION_MODEL for c in calls)
    assert loads(calls[0]["tool_calls"]) == [{"call_id": CALL_ID, "name": "get_weather", "arguments": ARGUMENTS}]
    assert loads(calls[0]["context"])["offset_ms"] == created["offset_ms"]
    context = loads(calls[1]["context"])
    assert context["delegation_id"] == delegation["id"]
    assert context["response_id"] == opened["event"]["response"]["id"]
    assert calls[1]["asked"] == f"(tool output) {TOOL_RESULT}" and calls[1]["text"] == ANSWER
    assert stored_twice(rows) == [], "each companion call is stored once"


async def test_live_commentary_is_said_verbatim(server: LiveServer, scripted: Script) -> None:
    async with live_session(server, model="gpt-live-1") as live:
        await live.until(lambda e: e["type"] == "session.output_audio.delta")
        await live.conn.session.commentary.append(content=COMMENTARY, delegation_id=None, event_id="comment")
        appended = await live.until_type("session.commentary.appended")
        at = len(live.events)
        assert appended["client_event_id"] == "comment" and appended["start_ms"] == appended["end_ms"]
        said = await live.until_said(COMMENTARY, at)
        assert said.count(COMMENTARY) == 1
        audio = [e for e in live.events[at:] if e["type"] == "session.output_audio.delta"]
        assert any(base64.b64decode(e["delta"]).strip(b"\0") for e in audio), "the commentary was not heard"
        assert live.errors() == []
        session_id = await close_live(live)
    conversation = await ended_conversation(server, session_id)
    items = stored_items(server, conversation["id"])
    stored = [row for row in items.values() if row["item_type"] == "commentary"]
    assert [row["text"] for row in stored] == [COMMENTARY]
    assert scripted.bodies == [], "commentary needs no companion"


async def test_live_response_create_failures_then_a_spoken_answer(server: LiveServer, scripted: Script) -> None:
    scripted.script(Reply(status=500), Reply(text="too late", delay=COMPANION_TIMEOUT_S + 3), Reply(text=GREETING))
    async with live_session(server, model="gpt-live-1", delegation=RESPONSES) as live:
        for event_id, code, said in [
            ("r500", "companion_error", "HTTP 500: scripted failure"),
            ("rslow", "companion_timeout", f"within {COMPANION_TIMEOUT_S}s"),
        ]:
            began = time.monotonic()
            await live.conn.response.create(event_id=event_id)
            opened = await live.until_nested("response.created")
            failed = await live.until_nested("response.failed", timeout=COMPANION_TIMEOUT_S + TIMEOUT)
            took = time.monotonic() - began
            assert opened["client_event_id"] == event_id and "delegation_id" not in opened
            response = failed["event"]["response"]
            assert response["id"] == opened["event"]["response"]["id"] and response["status"] == "failed"
            assert (response["error"]["code"], response["error"]["type"]) == ("server_error", code), response
            assert said in response["error"]["message"], response["error"]
            if code == "companion_timeout":
                assert COMPANION_TIMEOUT_S - 0.5 < took < COMPANION_TIMEOUT_S + 4, took
        assert not [e for e in live.events if e["type"] == "session.delegation.created"]

        # The session goes on: a response of the backend's own, streamed and said.
        await live.conn.response.create(event_id="rgood")
        at = len(live.events)
        await live.until_nested("response.completed")
        reply = live.nested(at)
        text = "".join(w["event"]["delta"] for w in reply if w["event"]["type"] == "response.output_text.delta")
        assert text == GREETING and all("delegation_id" not in w for w in reply)
        await live.until_said(GREETING, at)
        assert live.errors() == []
        session_id = await close_live(live)

    _, rows = await stored_calls(server, session_id, 3)
    calls = once(rows)
    assert [(c["purpose"], c["status"], c["error_code"]) for c in calls] == [
        ("response.create", "failed", "companion_error"),
        ("response.create", "failed", "companion_timeout"),
        ("response.create", "completed", ""),
    ]
    assert calls[2]["text"] == GREETING
    assert stored_twice(rows) == [], "each companion call is stored once"


async def test_live_hosted_tools_are_refused_at_session_start(server: LiveServer, scripted: Script) -> None:
    client = AsyncOpenAI(
        api_key="sk-live-e2e", base_url=f"{server.http_url}/v1", websocket_base_url=f"{server.ws_url}/v1", max_retries=0
    )
    hosted = {"type": "file_search", "vector_store_ids": ["vs_1"]}  # settings the Live schema does not declare
    bad = {"type": "responses", "responses": {"model": "gpt-5-mini", "tools": [LIVE_WEATHER, hosted]}}
    deadline = time.monotonic() + TIMEOUT
    async with contextlib.AsyncExitStack() as stack:
        while True:  # a slot the previous test's session still holds answers server_busy: connect again
            conn = await stack.enter_async_context(client.live.connect(max_retries=0))
            live = LiveClient(conn, server)
            await conn.session.start(session={"model": "gpt-live-1", "delegation": bad}, event_id="hosted")
            refusal = await live.recv()
            if not (refusal["type"] == "error" and refusal["error"]["code"] == "server_busy"):
                break
            await stack.aclose()
            assert time.monotonic() < deadline, f"no free session slot within {TIMEOUT:.0f}s"
            await asyncio.sleep(0.1)  # polling for a slot, bounded by the deadline above
        assert refusal["type"] == "error", refusal
        error = refusal["error"]
        assert (error["code"], error["param"]) == (
            "unsupported_server_tool",
            "session.delegation.responses.tools[1].type",
        )
        assert "file_search" in error["message"] and refusal["client_event_id"] == "hosted"

        choice = {"type": "responses", "responses": {"model": "gpt-5-mini", "tool_choice": {"type": "web_search"}}}
        await conn.session.start(session={"model": "gpt-live-1", "delegation": choice}, event_id="choice")
        refusal = await live.recv()
        assert refusal["type"] == "error" and refusal["client_event_id"] == "choice", refusal
        assert refusal["error"]["code"] == "unsupported_server_tool"
        assert refusal["error"]["param"] == "session.delegation.responses.tool_choice.type"
        assert "web_search" in refusal["error"]["message"]

        # Refused, not started: a start with function tools only is accepted.
        await conn.session.start(session={"model": "gpt-live-1", "delegation": RESPONSES}, event_id="good")
        started = await live.recv()
        assert started["type"] == "session.started" and started["client_event_id"] == "good", started
        await close_live(live)
    assert scripted.bodies == []
