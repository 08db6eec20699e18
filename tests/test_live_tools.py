"""Delegation emulated with a companion model (LIVE_PROTOCOL.md §12, §18), with no server and no model.

A LiveSession with ``companion=True`` is driven through session.start with delegation configs,
user segments and their transcripts, companion outcomes (tool calls, text, errors),
response.item.create / response.create and commentary. Every server event is validated strictly
against `openai.types.live`, and every nested `response.event` against the SDK's Responses
streaming events (`openai.types.responses.ResponseStreamEvent`), with no undeclared keys.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice.live import LiveOptions, LiveSession
from voice.protocol.companion import CompanionOutcome, CompanionRequest, ToolCall
from voice.protocol.effects import Effects
from voice.protocol.records import TranscriptionOutcome

from .strict_live import strict_live_nested
from .test_fuzz import to_text
from .test_live_fuzz import EVENTS, FUZZ, mutated
from .test_live_protocol import HUM, LOUD, error_of, pcm16, types
from .tools_data import CHAT_GET_TIME, FUNCTION_CALL_STREAM, GET_TIME, text_reply_stream

RESPONSES = {
    "type": "responses",
    "responses": {"model": "gpt-5.6-luna", "instructions": "You tell the time.", "tools": [GET_TIME]},
}
USAGE = {"prompt_tokens": 120, "completion_tokens": 14, "total_tokens": 134}


def checked(effects: Effects) -> Effects:
    for event in effects.events:
        strict_live_nested(event)
    return effects


def send(live: LiveSession, **event: Any) -> Effects:
    return checked(live.receive(json.dumps(event)))


def session_with(options: LiveOptions | None = None, **config: Any) -> tuple[LiveSession, Effects]:
    live = LiveSession(options or LiveOptions(companion=True, transcription_model="whisper", segment_silence_ms=240))
    effects = send(live, type="session.start", event_id="s1", session={"model": "gpt-live-1", **config})
    assert types(effects)[0] == "session.started", effects.events
    return live, effects


def user_says(live: LiveSession, text: str) -> Effects:
    """One spoken user segment (4 frames of speech, then silence), transcribed as ``text``."""
    send(live, type="session.input_audio.append", audio=pcm16(0.8))
    requests = []
    for index in range(10):
        speech = [0.9, 0.9] if 1 <= index < 5 else [0.0, 0.0]
        requests += checked(live.model_output(None, HUM, speech, True)).transcriptions
    (request,) = requests
    return checked(live.transcription_completed(TranscriptionOutcome(request.item_id, text, "whisper", None, 5, 0.4)))


def answer(
    request: CompanionRequest,
    text: str = "",
    calls: tuple[ToolCall, ...] = (),
    error: str | None = None,
    usage: dict[str, int] | None = USAGE,
) -> CompanionOutcome:
    return CompanionOutcome(
        request,
        text,
        calls,
        "qwen-companion",
        250,
        usage=None if error else usage,
        error=error,
        error_code="companion_timeout" if error else None,
    )


def nested(effects: Effects) -> list[dict[str, Any]]:
    return [e["event"] for e in effects.events if e["type"] == "response.event"]


def delegated_call(live: LiveSession) -> tuple[Effects, dict[str, Any]]:
    """'What time is it in Paris?' answered by the companion with one get_time call."""
    turn = user_says(live, "What time is it in Paris?")
    (request,) = turn.companion
    call = ToolCall("call_1", "get_time", '{"city": "Paris"}')
    effects = checked(live.companion_completed(answer(request, calls=(call,))))
    created = effects.events[0]
    assert created["type"] == "session.delegation.created"
    return effects, created


# --- responses target ---------------------------------------------------------------------------


def test_a_turn_asks_the_companion_with_the_backend_settings() -> None:
    live, _ = session_with(
        delegation=RESPONSES,
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "User is Ana."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello."}]},
        ],
    )
    checked(live.model_output(" Hi", LOUD))  # Moshi's own words are context too
    effects = user_says(live, "What time is it in Paris?")
    assert [e["delta"] for e in effects.events if e["type"] == "session.input_transcript.delta"]
    (request,) = effects.companion
    assert request.purpose == "delegation" and request.tool_choice == "auto"
    system = request.messages[0]
    assert system["role"] == "system" and system["content"].startswith("You tell the time.")
    assert "User is Ana." in system["content"]
    assert request.messages[1:] == [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "What time is it in Paris?"},
    ]
    assert request.tools == [CHAT_GET_TIME]


def test_tool_calls_become_a_delegation_and_a_function_call_stream() -> None:
    live, _ = session_with(delegation=RESPONSES)
    effects, created = delegated_call(live)
    delegation = created["delegation"]
    assert delegation["type"] == "delegation" and delegation["target"] == "responses"
    assert delegation["id"].startswith("dlg_") and delegation["response_id"].startswith("resp_")
    assert isinstance(created["offset_ms"], int) and 0 < created["offset_ms"] <= live.now_ms
    assert all(e["delegation_id"] == delegation["id"] for e in effects.events if e["type"] == "response.event")
    stream = nested(effects)
    assert [e["type"] for e in stream] == FUNCTION_CALL_STREAM
    assert [e["sequence_number"] for e in stream] == list(range(6))
    assert stream[0]["response"]["id"] == delegation["response_id"]
    assert stream[0]["response"]["status"] == "in_progress" and stream[0]["response"]["output"] == []
    added, done = stream[1]["item"], stream[4]["item"]
    assert (added["arguments"], added["status"]) == ("", "in_progress")
    assert done == {**added, "arguments": '{"city": "Paris"}', "status": "completed"}
    assert json.loads(done["arguments"]) == {"city": "Paris"} and done["call_id"] == "call_1"
    usage = stream[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (120, 14, 134)
    assert stream[-1]["response"]["status"] == "completed"
    assert any(isinstance(r, CompanionOutcome) for r in effects.records), "the outcome is stored"


def test_tool_outputs_then_response_create_continue_and_the_reply_is_spoken() -> None:
    live, _ = session_with(delegation=RESPONSES)
    _, created = delegated_call(live)
    delegation_id = created["delegation"]["id"]

    early = send(live, type="response.create", event_id="rc0")
    error = error_of(early)
    assert error["code"] == "function_call_outputs_required" and error["client_event_id"] == "rc0"
    assert "call_1" in error["message"]

    item = {"type": "function_call_output", "call_id": "call_1", "output": '{"time": "14:05"}'}
    assert send(live, type="response.item.create", event_id="i1", item=item).events == []
    effects = send(live, type="response.create", event_id="rc1")
    (created_event,) = effects.events
    assert created_event["client_event_id"] == "rc1" and created_event["delegation_id"] == delegation_id
    response_id = created_event["event"]["response"]["id"]
    assert response_id != created["delegation"]["response_id"]
    (request,) = effects.companion
    assert request.purpose == "tool_output"
    assert request.messages[-2]["tool_calls"][0]["id"] == "call_1"
    assert request.messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": '{"time": "14:05"}'}

    reply = checked(live.companion_completed(answer(request, text="It is five past two in Paris.")))
    stream = nested(reply)
    assert [e["type"] for e in stream] == text_reply_stream(7)
    assert all(e["delegation_id"] == delegation_id for e in reply.events)
    assert {e["response"]["id"] for e in stream if "response" in e} == {response_id}
    assert "".join(e["delta"] for e in stream if e["type"] == "response.output_text.delta") == (
        "It is five past two in Paris."
    )
    message = stream[-2]["item"]
    assert message["role"] == "assistant" and message["content"][0]["text"] == "It is five past two in Paris."
    assert stream[0]["sequence_number"] == 1  # after the response.created sent at response.create
    assert reply.speak == ["It is five past two in Paris."]

    # The engine forces the text: its pieces come back as output transcript deltas, exactly.
    out = []
    pieces = ["It", " is", " five", " past", " two", " in", " Paris."]
    for left, piece in enumerate(pieces):
        effects = checked(live.model_output(piece, LOUD, forced=True, forced_left=len(pieces) - left - 1))
        out += [e["delta"] for e in effects.events if e["type"] == "session.output_transcript.delta"]
    assert "".join(out) == "It is five past two in Paris."


def test_nothing_waits_after_the_reply() -> None:
    live, _ = session_with(delegation=RESPONSES)
    delegated_call(live)
    send(live, type="response.item.create", item={"type": "function_call_output", "call_id": "call_1", "output": "x"})
    (request,) = send(live, type="response.create").companion
    checked(live.companion_completed(answer(request, text="Done.")))
    item = {"type": "function_call_output", "call_id": "call_1", "output": "again"}
    assert error_of(send(live, type="response.item.create", item=item))["code"] == "no_pending_delegation"


def test_a_second_round_of_calls_waits_again() -> None:
    live, _ = session_with(delegation=RESPONSES)
    delegated_call(live)
    send(live, type="response.item.create", item={"type": "function_call_output", "call_id": "call_1", "output": "?"})
    (request,) = send(live, type="response.create").companion
    again = ToolCall("call_2", "get_time", '{"city": "Lyon"}')
    effects = checked(live.companion_completed(answer(request, calls=(again,))))
    assert [e["type"] for e in nested(effects)][-1] == "response.completed" and effects.speak == []
    assert error_of(send(live, type="response.create"))["code"] == "function_call_outputs_required"


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        ({"type": "function_call_output", "call_id": "call_9", "output": "x"}, "item.call_id", "invalid_value"),
        ({"type": "function_call_output", "output": "x"}, "item.call_id", "missing_required_parameter"),
        ({"type": "item_reference", "id": "x"}, "item.type", "unsupported_item"),
    ],
)
def test_bad_items(item: dict[str, Any], param: str, code: str) -> None:
    live, _ = session_with(delegation=RESPONSES)
    delegated_call(live)
    error = error_of(send(live, type="response.item.create", event_id="i", item=item))
    assert (error["param"], error["code"], error["client_event_id"]) == (param, code, "i")


def test_companion_failure_is_response_failed_never_a_hang() -> None:
    live, _ = session_with(delegation=RESPONSES)
    (request,) = user_says(live, "What time is it?").companion
    effects = checked(live.companion_completed(answer(request, error="The companion did not answer in 20 s.")))
    assert types(effects) == ["session.delegation.created", "response.event", "response.event"]
    failed = nested(effects)[-1]
    assert failed["type"] == "response.failed"
    response = failed["response"]
    assert response["status"] == "failed" and response["error"]["code"] == "server_error"
    assert response["error"]["type"] == "companion_timeout" and "20 s" in response["error"]["message"]
    # Nothing is left waiting: the next turn asks again.
    assert len(user_says(live, "Hello?").companion) == 1


def test_a_failed_continuation_is_response_failed() -> None:
    live, _ = session_with(delegation=RESPONSES)
    delegated_call(live)
    send(live, type="response.item.create", item={"type": "function_call_output", "call_id": "call_1", "output": "x"})
    (request,) = send(live, type="response.create").companion
    effects = checked(live.companion_completed(answer(request, error="boom")))
    (failed,) = nested(effects)
    assert failed["type"] == "response.failed" and effects.speak == []
    # Nothing waits for outputs any more: response.create asks the backend afresh.
    assert nested(send(live, type="response.create"))[0]["type"] == "response.created"


def test_a_plain_first_answer_is_no_delegation() -> None:
    """Moshi answers small talk by itself: the companion's text is stored, not streamed or spoken."""
    live, _ = session_with(delegation=RESPONSES)
    (request,) = user_says(live, "How are you?").companion
    effects = checked(live.companion_completed(answer(request, text="I'm fine!")))
    assert effects.events == [] and effects.speak == []
    assert effects.records == [effects.records[0]] and isinstance(effects.records[0], CompanionOutcome)


def test_turns_while_the_companion_thinks_are_asked_about_after() -> None:
    live, _ = session_with(delegation=RESPONSES)
    (first,) = user_says(live, "What time").companion
    assert user_says(live, "is it in Rome?").companion == []
    effects = checked(live.companion_completed(answer(first)))
    (second,) = effects.companion
    assert second.messages[-1] == {"role": "user", "content": "What time\nis it in Rome?"}


def test_response_create_without_a_delegation_asks_the_backend() -> None:
    live, _ = session_with(delegation=RESPONSES)
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
    assert send(live, type="response.item.create", item=user).events == []
    effects = send(live, type="response.create", event_id="r")
    (created,) = effects.events
    assert "delegation_id" not in created and created["event"]["type"] == "response.created"
    (request,) = effects.companion
    assert request.purpose == "response.create" and request.messages[-1] == {"role": "user", "content": "Say hello."}
    reply = checked(live.companion_completed(answer(request, text="Hello!")))
    assert nested(reply)[-1]["type"] == "response.completed" and reply.speak == ["Hello!"]


def test_no_tools_means_no_turn_delegation() -> None:
    live, _ = session_with(delegation={"type": "responses", "responses": {"model": "m"}})
    assert user_says(live, "What time is it?").companion == []


def test_tool_choice_is_converted() -> None:
    other = {**GET_TIME, "name": "get_date"}
    delegation = {
        "type": "responses",
        "responses": {
            "model": "m",
            "tools": [GET_TIME, other],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_date"}],
            },
        },
    }
    live, _ = session_with(delegation=delegation)
    (request,) = user_says(live, "Date?").companion
    assert request.tool_choice == "required" and [t["function"]["name"] for t in request.tools] == ["get_date"]
    forced = {
        "type": "responses",
        "responses": {"model": "m", "tools": [GET_TIME], "tool_choice": {"type": "function", "name": "get_time"}},
    }
    live, _ = session_with(delegation=forced)
    (request,) = user_says(live, "Time?").companion
    assert request.tool_choice == {"type": "function", "function": {"name": "get_time"}}


# --- client target ------------------------------------------------------------------------------


def test_client_delegation_commentary_is_acked_and_spoken() -> None:
    live, _ = session_with(instructions="Delegate bookings.", delegation={"type": "client"})
    (request,) = user_says(live, "Book me a table for two.").companion
    assert request.messages[0]["content"].startswith("Delegate bookings.")
    assert [t["function"]["name"] for t in request.tools] == ["delegate"]
    call = ToolCall("call_1", "delegate", '{"task": "Book a table for two."}')
    effects = checked(live.companion_completed(answer(request, calls=(call,))))
    (created,) = effects.events
    assert created["type"] == "session.delegation.created"
    delegation = created["delegation"]
    assert delegation["target"] == "client" and "response_id" not in delegation
    delegation_id = delegation["id"]

    thinking = send(
        live, type="session.thinking.append", event_id="t", content="Searching.", delegation_id=delegation_id
    )
    assert types(thinking)[0] == "session.thinking.appended" and thinking.speak == []
    said = send(
        live, type="session.commentary.append", event_id="c", content="Booked for 8 pm.", delegation_id=delegation_id
    )
    assert types(said) == ["session.commentary.appended"] and said.speak == ["Booked for 8 pm."]
    assert said.records[0].delegation_id == delegation_id

    (later,) = user_says(live, "Thanks, and a taxi?").companion
    assert "(thinking) Searching." in later.messages[0]["content"]
    assert {"role": "assistant", "content": "Booked for 8 pm."} in later.messages

    error = error_of(send(live, type="session.commentary.append", event_id="x", content="?", delegation_id="dlg_nope"))
    assert error["param"] == "delegation_id" and error["client_event_id"] == "x"


def test_client_small_talk_is_no_delegation_and_a_failure_is_an_info() -> None:
    live, _ = session_with(delegation={"type": "client"})
    (request,) = user_says(live, "Nice weather.").companion
    assert checked(live.companion_completed(answer(request, text=""))).events == []
    (request,) = user_says(live, "Book a taxi.").companion
    effects = checked(live.companion_completed(answer(request, error="down")))
    assert types(effects) == ["info"] and effects.events[0]["code"] == "delegation_failed"


def test_responses_delegation_refuses_delegation_ids() -> None:
    live, _ = session_with(delegation=RESPONSES)
    _, created = delegated_call(live)
    error = error_of(
        send(live, type="session.commentary.append", content="x", delegation_id=created["delegation"]["id"])
    )
    assert error["param"] == "delegation_id"


# --- start, transcription, and without a companion ----------------------------------------------


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "web_search"}, "session.delegation.responses.tools[1].type"),
        ({"type": "file_search", "vector_store_ids": ["vs_1"]}, "session.delegation.responses.tools[1].type"),
        ({"type": "mcp", "server_label": "x", "server_url": "https://x"}, "session.delegation.responses.tools[1].type"),
        ({"type": "code_interpreter", "container": "auto"}, "session.delegation.responses.tools[1].type"),
    ],
)
def test_hosted_tools_are_refused_at_start(tool: dict[str, Any], param: str) -> None:
    live = LiveSession(LiveOptions(companion=True, transcription_model="w"))
    delegation = {"type": "responses", "responses": {"model": "m", "tools": [GET_TIME, tool]}}
    error = error_of(
        send(live, type="session.start", event_id="s", session={"model": "gpt-live-1", "delegation": delegation})
    )
    assert (error["code"], error["param"], error["client_event_id"]) == ("unsupported_server_tool", param, "s")
    assert tool["type"] in error["message"] and not live.started


@pytest.mark.parametrize(
    ("choice", "param", "code"),
    [
        ({"type": "web_search"}, "session.delegation.responses.tool_choice.type", "unsupported_server_tool"),
        (
            {"type": "allowed_tools", "tools": [{"type": "file_search"}]},
            "session.delegation.responses.tool_choice.tools[0].type",
            "unsupported_server_tool",
        ),
        ({"type": "function", "name": "nope"}, "session.delegation.responses.tool_choice.name", "invalid_value"),
    ],
)
def test_bad_tool_choices_are_refused_at_start(choice: dict[str, Any], param: str, code: str) -> None:
    live = LiveSession(LiveOptions(companion=True))
    delegation = {"type": "responses", "responses": {"model": "m", "tools": [GET_TIME], "tool_choice": choice}}
    error = error_of(send(live, type="session.start", session={"model": "gpt-live-1", "delegation": delegation}))
    assert (error["code"], error["param"]) == (code, param)


def test_without_transcription_delegation_cannot_trigger_and_says_so() -> None:
    live, effects = session_with(LiveOptions(companion=True), delegation=RESPONSES)
    assert types(effects) == ["session.started", "info"]
    assert effects.events[1]["code"] == "delegation_needs_transcription"


def test_without_a_companion_nothing_delegates() -> None:
    live, effects = session_with(
        LiveOptions(transcription_model="whisper", segment_silence_ms=240), delegation=RESPONSES
    )
    assert types(effects) == ["session.started"]
    assert user_says(live, "What time is it?").companion == []
    assert error_of(send(live, type="response.create"))["code"] == "no_pending_delegation"
    thinking = send(live, type="session.thinking.append", content="x", delegation_id=None)
    assert types(thinking) == ["session.thinking.appended", "info"]


def test_update_refuses_hosted_tools_and_reconfigures_the_backend() -> None:
    live, _ = session_with(delegation=RESPONSES)
    update = {"delegation": {"type": "responses", "responses": {"tools": [{"type": "web_search", "filters": {}}]}}}
    error = error_of(send(live, type="session.update", event_id="u", session=update))
    assert (error["code"], error["param"]) == ("unsupported_server_tool", "session.delegation.responses.tools[0].type")
    update = {"delegation": {"type": "responses", "responses": {"instructions": "Be terse."}}}
    assert types(send(live, type="session.update", session=update)) == ["session.updated"]
    (request,) = user_says(live, "Time?").companion
    assert request.messages[0]["content"].startswith("Be terse.")


# --- fuzzing a session that waits for tool outputs ----------------------------------------------


@FUZZ
@given(st.lists(EVENTS | mutated(), min_size=1, max_size=4))
def test_fuzzed_events_while_a_delegation_waits(texts: list[Any]) -> None:
    """Whatever the client sends while a Responses delegation waits, the session answers with valid
    events (nested ones included), names the client's event_id in errors, and never fails."""
    live, _ = session_with(delegation=RESPONSES)
    delegated_call(live)
    for raw in texts:
        text = raw if isinstance(raw, str) else to_text(raw)
        effects = checked(live.receive(text))
        for event in effects.events:
            if event["type"] == "error":
                assert event["error"]["type"] != "server_error", (text[:300], event)
        for request in effects.companion:
            checked(live.companion_completed(answer(request, text="Okay.")))


def test_a_delegation_is_acknowledged_aloud_at_once_by_default() -> None:
    live, _ = session_with(delegation=RESPONSES)
    effects, _ = delegated_call(live)
    assert effects.speak == ["One moment."]
    live, _ = session_with(delegation={"type": "client"})
    (request,) = user_says(live, "Book a taxi.").companion
    call = ToolCall("c", "delegate", '{"task": "taxi"}')
    assert checked(live.companion_completed(answer(request, calls=(call,)))).speak == ["One moment."]


def test_a_delayed_acknowledgement_is_said_unless_commentary_or_thinking_comes_first() -> None:
    delegation = {"type": "client", "acknowledgement_delay_ms": 400}
    for cancel in (False, True):
        live, _ = session_with(delegation=delegation)
        (request,) = user_says(live, "Book a taxi.").companion
        call = ToolCall("c", "delegate", '{"task": "taxi"}')
        created = checked(live.companion_completed(answer(request, calls=(call,))))
        assert created.speak == []
        if cancel:
            delegation_id = created.events[0]["delegation"]["id"]
            send(live, type="session.thinking.append", content="Looking.", delegation_id=delegation_id)
        said = [text for _ in range(6) for text in checked(live.model_output(None, HUM)).speak]
        assert said == ([] if cancel else ["One moment."])
