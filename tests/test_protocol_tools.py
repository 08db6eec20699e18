"""Tools and instructions through the companion model: RealtimeSession with `companion=True`, no server.

The companion (voice/protocol/companion.py) is played by hand: the session's Effects.companion
requests are answered with `client.answer(...)`, ASR results with `client.transcribed(...)`, and
Moshi saying forced text with `client.forced(...)`. Every server event is validated strictly
against the dialect's SDK models (tests/strict.py). docs/protocol-mapping.md, "Tools through the
companion", is the behaviour under test.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from voice.protocol import Dialect, Effects, RealtimeSession, SessionOptions
from voice.protocol.companion import CompanionOutcome, CompanionRequest, ToolCall
from voice.protocol.records import ItemStored, TranscriptionOutcome
from voice.protocol.responses import ResponsePolicy
from voice.protocol.tools import INAUDIBLE, SPEECH_NOTE, function_tools, item_messages, tool_choice

from .protocol_client import (
    BOTH,
    LOUD,
    QUICK,
    QUIET,
    TEXT_ONLY,
    TURN_DETECTION_OFF,
    ProtocolClient,
    audio_ms,
    closing,
    opening,
    stored,
    types,
    wire,
)
from .tools_data import CHAT_WEATHER, WEATHER

ARGUMENTS = json.dumps({"city": "Paris", "unit": "celsius", "detail": "a long enough value to need two deltas"})
USAGE = {"prompt_tokens": 120, "completion_tokens": 14, "total_tokens": 134}


def session_update(dialect: Dialect, **fields: Any) -> dict[str, Any]:
    return {"type": "realtime", **fields} if dialect is Dialect.GA else fields


class CompanionClient(ProtocolClient):
    """A ProtocolClient whose session has a companion model; it keeps what the session asked of it."""

    def __init__(self, dialect: Dialect = Dialect.GA, policy: ResponsePolicy = QUICK, **options: Any) -> None:
        self.dialect = dialect
        options = {"companion": True, **options}
        self.session = RealtimeSession(
            SessionOptions(dialect=dialect, model_name="moshi-test", policy=policy, **options)
        )
        self.seen: list[dict[str, Any]] = []
        self.requests: list[CompanionRequest] = []
        self.greeting = self._checked(self.session.start())

    def _checked(self, effects: Effects) -> Effects:
        self.requests.extend(effects.companion)
        return super()._checked(effects)

    def with_tools(self, **fields: Any) -> None:
        self.update(session_update(self.dialect, tools=[WEATHER], **fields))

    def spoken_turn(self) -> tuple[str, Effects]:
        """The user speaks (with audio in the input buffer, so the turn is transcribed): the user
        item's id and what turn detection made of it."""
        self.send({"type": "input_audio_buffer.append", "audio": audio_ms(800)})
        effects = self.user_turn()
        [committed] = [e for e in effects.events if e["type"] == "input_audio_buffer.committed"]
        return committed["item_id"], effects

    def transcribed(self, item_id: str, text: str, error: str | None = None) -> Effects:
        outcome = TranscriptionOutcome(
            item_id=item_id,
            text=text,
            model="asr-test",
            language=None,
            latency_ms=120,
            audio_seconds=0.32,
            error=error,
            error_code="asr_error" if error else None,
        )
        return self._checked(self.session.transcription_completed(outcome))

    def heard_turn(self, text: str, error: str | None = None) -> Effects:
        """With the weather tool, the user speaks and the ASR hears ``text`` (or fails with
        ``error``): what the transcript brings."""
        self.with_tools()
        user_item, _ = self.spoken_turn()
        return self.transcribed(user_item, text, error)

    def answer(
        self,
        request: CompanionRequest | None = None,
        *,
        text: str = "",
        calls: tuple[ToolCall, ...] = (),
        usage: dict[str, int] | None = USAGE,
        error: str | None = None,
        code: str | None = None,
    ) -> Effects:
        """The companion answers ``request`` (the latest one by default)."""
        outcome = CompanionOutcome(
            request=request or self.requests[-1],
            text=text,
            tool_calls=calls,
            model="companion-test",
            latency_ms=300,
            usage=usage,
            error=error,
            error_code=code,
        )
        effects = self._checked(self.session.companion_completed(outcome))
        assert outcome in effects.records  # always stored
        return effects

    def forced(self, text: str | None, left: int, pcm: np.ndarray = LOUD, *, forced: bool = True) -> Effects:
        """One frame of Moshi saying forced text: ``text`` its next piece, ``left`` tokens still to say."""
        return self._checked(self.session.model_output(text, pcm, forced=forced and text is not None, forced_left=left))

    def say(self, *pieces: str, tail: int = 3) -> Effects:
        """Moshi says ``pieces`` (forced, one a frame), then ``tail`` frames of the audio lagging them."""
        effects = Effects()
        for index, piece in enumerate(pieces):
            effects.extend(self.forced(piece, len(pieces) - index - 1))
        for _ in range(tail):
            effects.extend(self.forced(None, 0, QUIET))
        return effects


def function_call_events(dialect: Dialect) -> list[str]:
    """One function call item, as OpenAI streams it (its arguments in two deltas)."""
    if dialect is Dialect.GA:
        return [
            "response.output_item.added",
            "conversation.item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "conversation.item.done",
            "response.output_item.done",
        ]
    return [
        "response.output_item.added",
        "conversation.item.created",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]


def by_type(effects: Effects, name: str) -> list[dict[str, Any]]:
    return [event for event in effects.events if event["type"] == name]


# --- the whole tool flow ------------------------------------------------------------------------


@BOTH
def test_a_spoken_turn_becomes_a_function_call_then_its_result_is_spoken(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.with_tools(instructions="You are a weather assistant.")
    user_item, turn = client.spoken_turn()

    # The turn is committed and a response opens, with nothing in it until the companion answers.
    assert types(turn)[-1] == "response.created"
    response_id = turn.events[-1]["response"]["id"]
    [asr] = turn.transcriptions  # the client asked for no transcription: the companion needs the words
    assert asr.item_id == user_item and turn.companion == []
    assert client.session.wants_output
    assert client.speak("Moshi's", " own", quiet_frames=5).events == []  # not part of this response

    heard = client.transcribed(user_item, "What's the weather in Paris?")
    assert heard.events == []  # not asked for: no transcription events
    [request] = heard.companion
    assert request.purpose == "turn" and request.context == {"response_id": response_id}
    assert request.messages == [
        {"role": "system", "content": "You are a weather assistant.\n\n" + SPEECH_NOTE},
        {"role": "user", "content": "What's the weather in Paris?"},
    ]
    assert (request.tools, request.tool_choice) == ([CHAT_WEATHER], "auto")
    retrieved = client.send({"type": "conversation.item.retrieve", "item_id": user_item}).events[0]["item"]
    assert retrieved["content"][0]["transcript"] is None  # the client sees no transcript it did not ask for

    call = ToolCall(call_id="call_w1", name="get_weather", arguments=ARGUMENTS)
    answered = client.answer(request, calls=(call,))
    assert types(answered) == [*function_call_events(dialect), "response.done"]
    added = answered.events[0]
    item_id = added["item"]["id"]
    assert (added["response_id"], added["output_index"]) == (response_id, 0)
    assert added["item"] == {
        "id": item_id,
        "type": "function_call",
        "status": "in_progress",
        "name": "get_weather",
        "call_id": "call_w1",
        "arguments": "",
        "object": "realtime.item",
    }
    deltas = by_type(answered, "response.function_call_arguments.delta")
    assert "".join(d["delta"] for d in deltas) == ARGUMENTS
    assert all((d["item_id"], d["call_id"], d["output_index"]) == (item_id, "call_w1", 0) for d in deltas)
    [done] = by_type(answered, "response.function_call_arguments.done")
    assert (done["arguments"], done["call_id"]) == (ARGUMENTS, "call_w1")
    assert done.get("name") == ("get_weather" if dialect is Dialect.GA else None)
    final = {**added["item"], "status": "completed", "arguments": ARGUMENTS}
    assert by_type(answered, "response.output_item.done")[0]["item"] == final
    response = answered.events[-1]["response"]
    assert (response["id"], response["status"], response["status_details"]) == (response_id, "completed", None)
    assert response["output"] == [final]
    assert response["usage"] == {
        "total_tokens": 134,
        "input_tokens": 120,
        "output_tokens": 14,
        "input_token_details": {"text_tokens": 120, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": 14, "audio_tokens": 0},
    }
    [record] = stored(answered)
    assert (record.item_type, record.text, record.response_id) == ("function_call", ARGUMENTS, response_id)
    assert not client.session.wants_output

    # The framework runs its tool and asks for the next response.
    output_item = {"type": "function_call_output", "call_id": "call_w1", "output": '{"temperature": 21}'}
    client.send({"type": "conversation.item.create", "item": output_item})
    created = client.send({"type": "response.create"})
    assert types(created) == ["response.created"]
    [follow_up] = created.companion
    assert follow_up.purpose == "tool_output"
    assert follow_up.messages[1:] == [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": '{"temperature": 21}'},
    ]

    # Text: Moshi says it; the response's transcript is what was forced, its audio Moshi's.
    spoken = client.answer(follow_up, text="  It is 21 degrees in Paris.  ")
    assert spoken.speak == ["It is 21 degrees in Paris."] and not spoken.hush
    assert types(spoken) == opening(dialect)[1:]
    ref = {k: spoken.events[-1][k] for k in ("response_id", "item_id", "output_index", "content_index")}
    audio_delta = wire(dialect, "response.output_audio.delta")
    transcript_delta = wire(dialect, "response.output_audio_transcript.delta")
    assert types(client.forced(None, 0, forced=False)) == [audio_delta]  # before the forced text begins
    assert types(client.forced("It", 6)) == [audio_delta, transcript_delta]
    assert types(client.forced("uh", 6, forced=False)) == [audio_delta]  # Moshi's own word: not in the transcript
    middle = client.say(" is", " 21", " degrees", " in", " Paris", tail=0)
    assert [e["delta"] for e in by_type(middle, transcript_delta)] == [" is", " 21", " degrees", " in", " Paris"]
    assert all({k: e[k] for k in ref} == ref for e in middle.events)
    assert types(client.forced(".", 0)) == [audio_delta, transcript_delta]
    assert types(client.forced(None, 0, QUIET)) == [audio_delta]  # the audio lags the text
    assert types(client.forced(None, 0, QUIET)) == [audio_delta]
    last = client.forced(None, 0, QUIET)
    assert types(last) == [audio_delta, *closing(dialect)] and not last.hush
    response = last.events[-1]["response"]
    assert response["status"] == "completed"
    [message] = response["output"]
    assert message["content"][0]["transcript"] == "It is 21 degrees in Paris."
    # Twelve frames of 8 audio tokens; the companion's prompt and completion.
    assert response["usage"]["output_token_details"] == {"text_tokens": 14, "audio_tokens": 96}
    assert response["usage"]["input_tokens"] == 120
    [record] = stored(last)
    assert (record.role, record.text, record.audio_ms) == ("assistant", "It is 21 degrees in Paris.", 960)
    assert not client.session.wants_output

    # The next turn's request carries the whole exchange.
    second, _ = client.spoken_turn()
    [ask] = client.transcribed(second, "Thanks!").companion
    assert ask.messages[-2:] == [
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
        {"role": "user", "content": "Thanks!"},
    ]


@BOTH
def test_visible_transcription_is_sent_and_the_companion_asked(dialect: Dialect) -> None:
    transcription = {"model": "whisper-1"}
    key = "input_audio_transcription" if dialect is Dialect.BETA else None
    client = CompanionClient(dialect)
    if key:
        client.update({"tools": [WEATHER], key: transcription})
    else:
        client.update({"type": "realtime", "tools": [WEATHER], "audio": {"input": {"transcription": transcription}}})
    user_item, turn = client.spoken_turn()
    assert turn.transcriptions[0].model == "whisper-1"
    heard = client.transcribed(user_item, "Hello there")
    assert types(heard) == ["conversation.item.input_audio_transcription.completed"]
    assert heard.companion[0].messages[-1] == {"role": "user", "content": "Hello there"}
    assert isinstance(heard.records[0], TranscriptionOutcome)


@BOTH
def test_a_failed_transcription_asks_with_the_turn_marked_inaudible(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    heard = client.heard_turn("", error="ASR down")
    assert heard.events == []  # not asked for: not told of its failure either
    assert heard.companion[0].messages[-1] == {"role": "user", "content": INAUDIBLE}


def test_the_user_item_without_audio_is_asked_about_at_once() -> None:
    """A turn with nothing in the input buffer is not transcribed: nothing to wait for."""
    client = CompanionClient()
    client.with_tools()
    turn = client.user_turn()
    assert turn.transcriptions == [] and types(turn)[-1] == "response.created"
    [request] = turn.companion
    assert request.messages[-1] == {"role": "user", "content": INAUDIBLE}


@BOTH
def test_a_manual_commit_then_response_create_waits_for_the_words(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.update(TURN_DETECTION_OFF[dialect])
    client.with_tools()
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(500)})
    committed = client.send({"type": "input_audio_buffer.commit"})
    [asr] = committed.transcriptions
    created = client.send({"type": "response.create"})
    assert types(created) == ["response.created"] and created.companion == []
    [request] = client.transcribed(asr.item_id, "Book a table").companion
    assert request.messages[-1] == {"role": "user", "content": "Book a table"}


# --- response.create with instructions ------------------------------------------------------------


@BOTH
def test_response_create_with_instructions_is_answered_by_the_companion(dialect: Dialect) -> None:
    client = CompanionClient(dialect)  # no tools at all
    client.update(session_update(dialect, instructions="You take pizza orders."))
    created = client.send({"type": "response.create", "response": {"instructions": "Greet the user."}})
    assert types(created) == ["response.created"]
    [request] = created.companion
    assert request.purpose == "response.create"
    assert request.messages == [
        {"role": "system", "content": "You take pizza orders.\n\nGreet the user.\n\n" + SPEECH_NOTE}
    ]
    assert (request.tools, request.tool_choice) == ([], None)
    spoken = client.answer(request, text="Hello! What can I get you?")
    assert spoken.speak == ["Hello! What can I get you?"]
    done = client.say("Hello!", " What", " can", " I", " get", " you?")
    assert done.events[-1]["response"]["output"][0]["content"][0]["transcript"] == "Hello! What can I get you?"


@BOTH
def test_without_tools_or_instructions_moshi_answers_as_before(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    opened = client.send({"type": "response.create"})
    assert types(opened) == opening(dialect) and opened.companion == []
    assert client.speak("Hi", quiet_frames=3).events[-1]["response"]["status"] == "completed"
    _, turn = client.spoken_turn()
    assert types(turn)[-len(opening(dialect)) :] == opening(dialect) and turn.companion == []
    assert turn.transcriptions  # still transcribed: a later response may need the words


@BOTH
def test_a_text_only_response_gets_the_companions_text_as_its_text(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.update(TEXT_ONLY[dialect])
    created = client.send({"type": "response.create", "response": {"instructions": "Say the order is confirmed."}})
    request = created.companion[0]
    assert SPEECH_NOTE not in request.messages[0]["content"]  # not spoken
    answered = client.answer(request, text="Your order is confirmed.")
    text_delta = wire(dialect, "response.output_text.delta")
    assert types(answered) == [*opening(dialect)[1:], text_delta, *closing(dialect, audio=False)]
    assert answered.speak == []
    assert by_type(answered, text_delta)[0]["delta"] == "Your order is confirmed."
    response = answered.events[-1]["response"]
    part = response["output"][0]["content"][0]
    assert part == {"type": "output_text" if dialect is Dialect.GA else "text", "text": "Your order is confirmed."}


@BOTH
def test_text_and_a_tool_call_the_message_first_then_the_call(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.with_tools()
    client.send({"type": "response.create"})
    call = ToolCall(call_id="call_2", name="get_weather", arguments=ARGUMENTS)
    spoken = client.answer(text="Let me check.", calls=(call,))
    assert spoken.speak == ["Let me check."]
    assert "response.output_item.added" in types(spoken)
    done = client.say("Let", " me", " check.")
    tail = types(done)[types(done).index("response.content_part.done") :]
    expected = ["response.content_part.done"]
    if dialect is Dialect.GA:
        expected.append("conversation.item.done")
    assert tail == [*expected, "response.output_item.done", *function_call_events(dialect), "response.done"]
    calls = [e for e in by_type(done, "response.output_item.added")]
    assert calls[0]["output_index"] == 1
    output = done.events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call"]


@BOTH
def test_an_empty_answer_completes_the_response_with_no_output(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.with_tools()
    client.send({"type": "response.create"})
    answered = client.answer(text="   ")
    assert types(answered) == ["response.done"] and answered.speak == []
    assert answered.events[0]["response"]["status"] == "completed"
    assert answered.events[0]["response"]["output"] == []


# --- errors, cancel, barge-in ---------------------------------------------------------------------


@BOTH
def test_a_companion_error_is_an_error_event_and_a_failed_response(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.with_tools()
    response_id = client.send({"type": "response.create"}).events[0]["response"]["id"]
    failed = client.answer(error="The companion did not answer within 20 s.", code="companion_timeout", usage=None)
    assert types(failed) == ["error", "response.done"]
    error = failed.events[0]["error"]
    assert (error["type"], error["code"], error["event_id"]) == ("server_error", "companion_timeout", None)
    assert error["message"] == "The companion did not answer within 20 s."
    response = failed.events[1]["response"]
    assert (response["id"], response["status"], response["output"]) == (response_id, "failed", [])
    assert response["status_details"] == {
        "type": "failed",
        "error": {"type": "server_error", "code": "companion_timeout", "message": error["message"]},
    }
    assert response["usage"]["total_tokens"] == 0
    assert not client.session.wants_output
    # The session goes on: the next response asks again.
    assert client.send({"type": "response.create"}).companion


@BOTH
def test_cancel_while_the_companion_thinks_drops_its_late_answer(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.with_tools()
    response_id = client.send({"type": "response.create"}).events[0]["response"]["id"]
    request = client.requests[-1]
    cancelled = client.send({"type": "response.cancel"})
    assert types(cancelled) == ["response.done"] and not cancelled.hush
    response = cancelled.events[0]["response"]
    assert (response["id"], response["status"], response["output"]) == (response_id, "cancelled", [])
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    late = client.answer(request, text="Too late.", calls=(ToolCall("call_x", "get_weather", "{}"),))
    assert late.events == [] and late.speak == [] and late.records and late.companion == []


@BOTH
def test_a_new_request_waits_for_the_one_still_out(dialect: Dialect) -> None:
    """At most one companion request in flight per session: the next one is held until it is back."""
    client = CompanionClient(dialect)
    client.with_tools()
    client.send({"type": "response.create"})
    first = client.requests[-1]
    client.send({"type": "response.cancel"})
    client.send({"type": "response.create"})
    second_held = client.send({"type": "response.cancel"})
    third = client.send({"type": "response.create"})
    assert third.companion == [] and second_held.companion == []
    late = client.answer(first, text="Old.")
    assert late.events == []
    [held] = late.companion  # the latest one only: the second's response was closed meanwhile
    assert held.context == {"response_id": third.events[0]["response"]["id"]}
    answered = client.answer(held, text="New.")
    assert answered.speak == ["New."]
    # A held request whose response closes before it goes out is never sent.
    client.say("New.")
    client.send({"type": "response.create"})
    out = client.requests[-1]
    client.send({"type": "response.cancel"})
    client.send({"type": "response.create"})
    client.send({"type": "response.cancel"})
    assert client.answer(out).companion == []


@BOTH
def test_barge_in_while_moshi_says_the_answer_hushes_the_rest(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.heard_turn("Tell me a story")
    client.answer(text="Once upon a time there was a cat.")
    client.forced("Once", 7)
    client.forced(" upon", 6)
    interrupted = client.user_turn(pause=())  # speech starts: barge-in
    assert interrupted.hush
    done = by_type(interrupted, "response.done")[0]["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["output"][0]["content"][0]["transcript"] == "Once upon"
    # Frames of forced text still in flight reach nobody.
    assert client.forced(" a", 3).events == []


@BOTH
def test_barge_in_while_the_companion_thinks_cancels_without_output(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.heard_turn("Hello")
    interrupted = client.user_turn(pause=())
    done = by_type(interrupted, "response.done")[0]["response"]
    assert (done["status"], done["output"]) == ("cancelled", [])
    assert not interrupted.hush


def test_closing_the_session_while_speaking_hushes() -> None:
    client = CompanionClient()
    client.send({"type": "response.create", "response": {"instructions": "Say goodbye."}})
    client.answer(text="Goodbye!")
    client.forced("Good", 1)
    closed = client.close()
    assert closed.hush and closed.events[-1]["response"]["status"] == "cancelled"


def test_max_output_tokens_while_speaking_ends_incomplete_and_hushes() -> None:
    client = CompanionClient()
    client.send({"type": "response.create", "response": {"instructions": "Talk.", "max_output_tokens": 40}})
    client.answer(text="A long answer.", usage={"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25})
    client.forced("A", 3)
    client.forced(" long", 2)
    last = client.forced(" answer", 1)  # 20 + 3 frames of 8 audio tokens
    response = last.events[-1]["response"]
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert last.hush


def test_a_companion_message_can_be_truncated_while_spoken() -> None:
    client = CompanionClient()
    client.send({"type": "response.create", "response": {"instructions": "Count."}})
    opened = client.answer(text="one two three")
    item_id = opened.events[0]["item"]["id"]
    client.say("one", " two", " three", tail=0)
    truncated = client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 160}
    )
    assert types(truncated) == ["conversation.item.truncated"]
    done = client.forced(None, 0, QUIET)
    done.extend(client.forced(None, 0, QUIET))
    done.extend(client.forced(None, 0, QUIET))
    assert done.events[-1]["response"]["output"][0]["content"][0]["transcript"] == "one two"


# --- patience: nothing hangs ----------------------------------------------------------------------


def test_words_that_never_come_are_given_up_on() -> None:
    """No ASR answer (none configured, say) within transcript_wait_ms: the companion is asked without them."""
    client = CompanionClient(policy=ResponsePolicy(end_silence_ms=240, transcript_wait_ms=400))
    client.with_tools()
    user_item, _ = client.spoken_turn()
    assert client.requests == []
    for _ in range(3):  # the tick that ended the turn was the first of five
        assert client.hear(0.0).companion == []
    [request] = client.hear(0.0).companion
    assert request.messages[-1] == {"role": "user", "content": INAUDIBLE}
    late = client.transcribed(user_item, "Late words")  # stored, still not shown to the client
    assert late.events == [] and late.companion == [] and late.records
    client.answer(request, text="")
    client.send({"type": "response.create"})  # not waiting for it again
    assert client.requests[-1].messages[-1] == {"role": "user", "content": "Late words"}


def test_without_an_asr_service_nothing_is_transcribed_or_waited_for() -> None:
    client = CompanionClient(transcribe=False)
    client.with_tools()
    _, turn = client.spoken_turn()
    assert turn.transcriptions == [] and len(turn.companion) == 1


def test_a_companion_that_never_answers_fails_the_response() -> None:
    client = CompanionClient(policy=ResponsePolicy(end_silence_ms=240, companion_wait_ms=400))
    client.with_tools()
    client.send({"type": "response.create"})
    first = client.requests[-1]
    for _ in range(4):
        assert client.hear(0.0).events == []
    failed = client.hear(0.0)
    assert types(failed) == ["error", "response.done"]
    assert failed.events[0]["error"]["code"] == "companion_timeout"
    assert failed.events[1]["response"]["status"] == "failed"
    # Given up on: the next request goes out at once, and the lost one's answer is only stored.
    assert client.send({"type": "response.create"}).companion
    assert client.answer(first, text="Late").events == []


def test_forced_text_that_never_begins_ends_the_response() -> None:
    client = CompanionClient(policy=ResponsePolicy(end_silence_ms=240, forced_start_ms=400))
    client.send({"type": "response.create", "response": {"instructions": "Hi."}})
    client.answer(text="Hi.")
    frames = [client.forced(None, 0, LOUD, forced=False) for _ in range(5)]
    assert [types(f)[-1] for f in frames].index("response.done") == 4
    assert frames[-1].hush  # should it come after all, it is not said outside the response


# --- tool_choice ----------------------------------------------------------------------------------


@BOTH
def test_tool_choice_required_is_passed_to_the_companion(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    client.with_tools()
    created = client.send({"type": "response.create", "response": {"tool_choice": "required"}})
    assert types(created) == ["response.created"]
    assert created.companion[0].tool_choice == "required"


def test_a_named_function_and_response_tools_are_passed_to_the_companion() -> None:
    client = CompanionClient()
    client.update(session_update(Dialect.GA, tool_choice={"type": "function", "name": "get_weather"}, tools=[WEATHER]))
    [request] = client.send({"type": "response.create"}).companion
    assert request.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    other = {"type": "function", "name": "book", "parameters": {"type": "object"}}
    client.send({"type": "response.cancel"})
    client.answer(request)  # back: the next goes out at once
    [own] = client.send({"type": "response.create", "response": {"tools": [other], "tool_choice": "auto"}}).companion
    assert own.tools == [{"type": "function", "function": {"name": "book", "parameters": {"type": "object"}}}]


def test_without_a_companion_tool_choice_required_is_still_refused_and_tools_change_nothing() -> None:
    client = ProtocolClient()
    client.update(session_update(Dialect.GA, tools=[WEATHER], instructions="Use tools."))
    error = client.error({"type": "response.create", "event_id": "evt_r", "response": {"tool_choice": "required"}})
    assert (error["code"], error["param"]) == ("invalid_value", "response.tool_choice")
    opened = client.send({"type": "response.create", "response": {"instructions": "Greet."}})
    assert types(opened) == opening(Dialect.GA) and opened.companion == [] and opened.transcriptions == []
    client.send({"type": "response.cancel"})
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(800)})
    assert client.user_turn().transcriptions == []  # transcription stays the client's choice


# --- out of band, the tool results' turn ----------------------------------------------------------


def out_of_band_summary(client: CompanionClient, **response: Any) -> CompanionRequest:
    """Two user messages ("msg_order", then another), then an out-of-band response.create
    (conversation "none") that asks to summarise the order, with ``response``'s fields too; the
    companion request it makes."""
    client.user_text("I want a margherita.", item_id="msg_order")
    client.user_text("And a cola.")
    created = client.send(
        {
            "type": "response.create",
            "response": {"conversation": "none", "instructions": "Summarise the order.", **response},
        }
    )
    [request] = created.companion
    return request


def test_an_out_of_band_response_reads_its_own_input() -> None:
    client = CompanionClient()
    request = out_of_band_summary(
        client,
        output_modalities=["text"],
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Two, please."}]}],
    )
    assert request.messages[1:] == [{"role": "user", "content": "Two, please."}]  # not the conversation
    answered = client.answer(request, text="One margherita.")
    assert "conversation.item.added" not in types(answered)
    assert answered.events[-1]["response"]["conversation_id"] is None
    assert stored(answered) == []


@BOTH
def test_tool_results_make_the_response_companion_driven_without_session_tools(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    call = {"type": "function_call", "call_id": "call_9", "name": "lookup", "arguments": "{}"}
    client.send({"type": "conversation.item.create", "item": call})
    client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_9", "output": "42"},
        }
    )
    created = client.send({"type": "response.create"})
    assert types(created) == ["response.created"]
    assert created.companion[0].purpose == "tool_output"


# --- the translation ------------------------------------------------------------------------------


def test_function_tools_and_tool_choice_translation() -> None:
    assert function_tools([WEATHER, {"type": "mcp", "server_label": "x"}, {"type": "function", "name": "bare"}]) == [
        CHAT_WEATHER,
        {"type": "function", "function": {"name": "bare", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert [tool_choice(c) for c in ("auto", "none", "required", None)] == ["auto", "none", "required", "auto"]
    assert tool_choice({"type": "mcp", "server_label": "x"}) == "auto"


def test_item_messages_pair_tool_results_with_their_calls() -> None:
    def call(call_id: str) -> dict[str, Any]:
        return {"type": "function_call", "call_id": call_id, "name": "f", "arguments": "{}"}

    def output(call_id: str, text: str) -> dict[str, Any]:
        return {"type": "function_call_output", "call_id": call_id, "output": text}

    assistant = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "Checking."}],
    }
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    items = [assistant, call("a"), call("b"), user, output("a", "A"), output("z", "Z"), output("a", "again")]
    assert item_messages((item, None) for item in items) == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "a", "content": "A"},  # right after its call; b, unanswered, dropped
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "(result of z) Z"},  # answers no call
        {"role": "user", "content": "(result of a) again"},
    ]
    audio_user = {"type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
    assert item_messages([(audio_user, "heard"), (audio_user, None)]) == [
        {"role": "user", "content": "heard"},
        {"role": "user", "content": INAUDIBLE},
    ]


@BOTH
def test_hidden_transcripts_reach_the_records(dialect: Dialect) -> None:
    client = CompanionClient(dialect)
    heard = client.heard_turn("Stored anyway")
    [record] = heard.records
    assert isinstance(record, TranscriptionOutcome) and record.text == "Stored anyway"
    assert not any(isinstance(r, ItemStored) for r in heard.records)


def test_a_beta_out_of_band_response_reads_referenced_items() -> None:
    client = CompanionClient(Dialect.BETA)
    references = [{"type": "item_reference", "id": "msg_order"}, {"type": "item_reference", "id": "gone"}]
    request = out_of_band_summary(client, input=references)
    assert request.messages[1:] == [{"role": "user", "content": "I want a margherita."}]


# --- a random walk: whatever happens in whatever order, every event is valid and nothing hangs -----


@BOTH
@pytest.mark.parametrize("seed", range(6))
def test_random_walks_stay_valid_and_never_hang(dialect: Dialect, seed: int) -> None:
    rng = np.random.default_rng(seed)
    client = CompanionClient(
        dialect, policy=ResponsePolicy(end_silence_ms=240, transcript_wait_ms=800, companion_wait_ms=1600)
    )
    client.with_tools()
    answered: set[str] = set()
    pending_asr: list[str] = []
    weights = np.array([3, 15, 15, 8, 4, 5, 30, 20]) / 100  # turn, asr, answer, create, cancel, output, say, tick
    for _ in range(400):
        action = int(rng.choice(8, p=weights))
        if action == 0:
            _, turn = client.spoken_turn()
            pending_asr += [request.item_id for request in turn.transcriptions]
        elif action == 1 and pending_asr:
            client.transcribed(pending_asr.pop(0), "words", error="down" if rng.random() < 0.2 else None)
        elif action == 2:
            open_ones = [r for r in client.requests if r.request_id not in answered]
            if open_ones:
                request = open_ones[int(rng.integers(0, len(open_ones)))]
                answered.add(request.request_id)
                kind = rng.integers(0, 3)
                calls = (ToolCall(f"call_{len(answered)}", "get_weather", ARGUMENTS),) if kind == 0 else ()
                client.answer(
                    request,
                    text="Sure thing." if kind == 1 else "",
                    calls=calls,
                    error="boom" if kind == 2 else None,
                    code="companion_error" if kind == 2 else None,
                )
        elif action == 3:
            client.send({"type": "response.create", "response": {"instructions": "Go on."}})
        elif action == 4:
            client.send({"type": "response.cancel"})
        elif action == 5:
            output = {"type": "function_call_output", "call_id": f"call_{len(answered)}", "output": "ok"}
            client.send({"type": "conversation.item.create", "item": output})
        elif action == 6:
            left = int(rng.integers(0, 3))
            client.forced("word" if left else None, left)
        else:
            client.hear(0.0)
        assert not any(e["type"] == "error" and e["error"]["code"] == "server_error" for e in client.seen)
    # However it stands, a silent stretch ends it: every response closes.
    for _ in range(40):
        client.forced(None, 0, QUIET)
        for request in client.requests:
            if request.request_id not in answered:
                answered.add(request.request_id)
                client.answer(request, text="Done.")
    assert not client.session.wants_output
    created = [e["response"]["id"] for e in client.seen if e["type"] == "response.created"]
    done = [e["response"]["id"] for e in client.seen if e["type"] == "response.done"]
    assert created == done  # exactly one response.done each, in order
