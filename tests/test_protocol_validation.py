"""Client input is checked by type before it is used: what once crashed the session, and the rules
that keep any input from doing so (nesting depth, numbers, null, unknown keys, the last-resort guard)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from voice.protocol import Dialect, Effects
from voice.protocol.validation import MAX_JSON_DEPTH, json_depth_exceeds

from .protocol_client import BOTH, FRAMEWORK_SESSION, ProtocolClient, types

GA, BETA = Dialect.GA, Dialect.BETA


def error_of(client: ProtocolClient, event: dict[str, Any] | str) -> dict[str, Any]:
    """The one `error` an event gets; the session must still answer afterwards."""
    error = client.error(event)
    assert error["type"] == "invalid_request_error" and error["message"], error
    assert types(client.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    return error


# --- the inputs that used to crash the session ------------------------------------------------

CRASHES = [
    pytest.param(
        BETA,
        {"type": "session.update", "session": {"input_audio_format": None}},
        "invalid_type",
        "session.input_audio_format",
        id="beta-null-input-audio-format",
    ),
    pytest.param(
        GA,
        {"type": "session.update", "session": {"type": "realtime", "audio": {"input": None}}},
        "invalid_type",
        "session.audio.input",
        id="ga-null-audio-input",
    ),
    pytest.param(
        GA,
        {"type": "response.create", "response": {"modalities": 5}},
        "invalid_type",
        "response.modalities",
        id="ga-modalities-5",
    ),
    pytest.param(
        GA,
        {"type": "response.create", "response": {"output_modalities": 5}},
        "invalid_type",
        "response.output_modalities",
        id="ga-output-modalities-5",
    ),
    pytest.param(
        BETA,
        {"type": "response.create", "response": {"modalities": 5}},
        "invalid_type",
        "response.modalities",
        id="beta-modalities-5",
    ),
    pytest.param(
        BETA,
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": None}},
        "invalid_type",
        "item.content",
        id="beta-null-content",
    ),
    pytest.param(
        GA,
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": None}},
        "invalid_type",
        "item.content",
        id="ga-null-content",
    ),
]


@pytest.mark.parametrize(("dialect", "event", "code", "param"), CRASHES)
def test_what_once_crashed_is_an_error_naming_the_parameter(
    dialect: Dialect, event: dict[str, Any], code: str, param: str
) -> None:
    client = ProtocolClient(dialect)
    before = client.session.config
    error = error_of(client, {**event, "event_id": "evt_crash"})
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_crash")
    assert client.session.config == before and client.session.response is None


def test_deep_nesting_is_refused_before_it_is_parsed() -> None:
    client = ProtocolClient()
    error = error_of(client, "[" * 10_000 + "]" * 10_000)
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_event", None, None)
    assert str(MAX_JSON_DEPTH) in error["message"]
    nested = '{"a": ' * 100_000 + "{}" + "}" * 100_000
    error = error_of(client, '{"type": "session.update", "event_id": "evt_deep", "session": ' + nested + "}")
    assert error["code"] == "invalid_event"
    # As deep as allowed: parsed, and then refused for what it is (an unknown parameter), not its depth.
    nested = '{"a": ' * (MAX_JSON_DEPTH - 2) + "{}" + "}" * (MAX_JSON_DEPTH - 2)
    error = error_of(client, '{"type": "session.update", "event_id": "evt_ok", "session": ' + nested + "}")
    assert (error["code"], error["param"], error["event_id"]) == ("unknown_parameter", "session.a", "evt_ok")


@BOTH
@pytest.mark.parametrize(
    ("event", "param"),
    [
        (
            {"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": "100"},
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": 1.5},
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": None},
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "x", "content_index": True, "audio_end_ms": 0},
            "content_index",
        ),
        ({"type": "conversation.item.delete", "item_id": 7}, "item_id"),
        ({"type": "input_audio_buffer.append", "audio": None}, "audio"),
        ({"type": "response.create", "response": None}, "response"),
        ({"type": "response.create", "response": {"metadata": {"topic": 5}}}, "response.metadata.topic"),
        ({"type": "response.create", "response": {"tools": [None]}}, "response.tools[0]"),
        ({"type": "response.cancel", "response_id": ["resp_1"]}, "response_id"),
        ({"type": "session.update", "session": {"instructions": None}}, "session.instructions"),
        ({"type": "session.update", "session": {"tools": None}}, "session.tools"),
        ({"type": "session.update", "session": {"tools": "none"}}, "session.tools"),
        ({"type": "session.update", "event_id": 5, "session": {}}, "event_id"),
    ],
)
def test_a_wrong_type_anywhere_is_invalid_type(dialect: Dialect, event: dict[str, Any], param: str) -> None:
    client = ProtocolClient(dialect)
    if event["type"] == "session.update" and dialect is GA and isinstance(event.get("session"), dict):
        event = {**event, "session": {"type": "realtime", **event["session"]}}
    error = error_of(client, event)
    assert (error["code"], error["param"]) == ("invalid_type", param), error
    assert f"'{param}'" in error["message"]


@BOTH
def test_truncate_takes_the_integer_it_was_given(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    item_id, _ = client.completed_response("Hi")
    truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 80}
    assert types(client.send(truncate)) == ["conversation.item.truncated"]


# --- numbers and strings no parser should keep --------------------------------------------------


@pytest.mark.parametrize(
    "number",
    ["1" + "0" * 5000, "-" + "9" * 5000, "9223372036854775808", "1e999", "-1e999", "NaN", "Infinity", "-Infinity"],
    ids=["5000-digits", "minus-5000-digits", "past-int64", "1e999", "-1e999", "nan", "inf", "-inf"],
)
def test_a_number_out_of_range_keeps_the_event_id(number: str) -> None:
    client = ProtocolClient()
    text = (
        '{"type": "conversation.item.truncate", "event_id": "evt_big", "item_id": "x", "content_index": 0, '
        f'"audio_end_ms": {number}}}'
    )
    error = error_of(client, text)
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio_end_ms", "evt_big")


def test_a_number_out_of_range_is_named_where_it_is() -> None:
    client = ProtocolClient()
    text = (
        '{"type": "session.update", "event_id": "evt_n", "session": {"type": "realtime", '
        '"tools": [{"type": "function", "name": "f", "parameters": {"maximum": 1e400}}]}}'
    )
    error = error_of(client, text)
    assert (error["code"], error["param"], error["event_id"]) == (
        "invalid_value",
        "session.tools[0].parameters.maximum",
        "evt_n",
    )


def test_the_largest_int64_is_a_number_like_any_other() -> None:
    client = ProtocolClient()
    text = '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": 9223372036854775807}'
    assert error_of(client, text)["code"] == "item_truncate_invalid_item_id"


def test_a_lone_surrogate_is_not_text() -> None:
    client = ProtocolClient()
    event = '{"type": "conversation.item.create", "event_id": "evt_s", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a\\ud800b"}]}}'
    error = error_of(client, event)
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "item.content[0].text", "evt_s")
    assert client.session.conversation.last_id is None


@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe\x00garbage",
        b'{"type": "input_audio_buffer.clear", "x": "\xc3"}',
        "",
        "   ",
        "nul\x00",
        '{"type": "a"',
        "[1, 2]",
        "null",
    ],
    ids=["binary", "bad-utf8", "empty", "blank", "nul", "unclosed", "array", "null"],
)
def test_text_that_is_not_an_event_is_invalid_event(text: str | bytes) -> None:
    client = ProtocolClient()
    effects = client.send(text)
    assert types(effects) == ["error"] and effects.events[0]["error"]["code"] == "invalid_event"


def test_nul_and_other_unicode_in_text_is_kept() -> None:
    client = ProtocolClient()
    text = "nul \x00, emoji \U0001f600, rtl \u202e, combining e\u0301"
    effects = client.user_text(text, item_id="msg_u")
    assert effects.events[0]["item"]["content"][0]["text"] == text


# --- unknown keys and null where it is allowed ---------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("event", "param"),
    [
        ({"type": "input_audio_buffer.clear", "extra": 1}, "extra"),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [], "_pieces": []},
            },
            "item._pieces",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a", "x": 1}]},
            },
            "item.content[0].x",
        ),
        ({"type": "response.create", "response": {"colour": "red"}}, "response.colour"),
    ],
)
def test_an_unknown_key_anywhere_is_unknown_parameter(dialect: Dialect, event: dict[str, Any], param: str) -> None:
    error = error_of(ProtocolClient(dialect), {**event, "event_id": "evt_x"})
    assert (error["code"], error["param"], error["event_id"]) == ("unknown_parameter", param, "evt_x")


def test_an_unknown_key_inside_a_setting_is_unknown_parameter() -> None:
    client = ProtocolClient()
    session = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "loudness": 3}}}}
    error = error_of(client, {"type": "session.update", "session": session})
    assert (error["code"], error["param"]) == ("unknown_parameter", "session.audio.input.turn_detection.loudness")


@pytest.mark.parametrize(
    ("dialect", "session"),
    [
        (GA, {"type": "realtime", "audio": {"input": {"turn_detection": None}}}),
        (GA, {"type": "realtime", "audio": {"input": {"transcription": None, "noise_reduction": None}}}),
        (GA, {"type": "realtime", "tracing": None, "prompt": None, "include": None}),
        (
            GA,
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": None}}},
            },
        ),
        (GA, {"type": "realtime", "tools": [{"type": "function", "name": "f", "parameters": None}]}),
        (BETA, {"turn_detection": None, "input_audio_transcription": None, "input_audio_noise_reduction": None}),
        (BETA, {"tracing": None, "client_secret": None}),
    ],
)
def test_null_is_accepted_where_the_protocol_allows_it(dialect: Dialect, session: dict[str, Any]) -> None:
    ProtocolClient(dialect).update(session)


@BOTH
def test_null_event_id_previous_item_id_and_metadata_are_accepted(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    effects = client.user_text("hi", event_id=None, previous_item_id=None)
    assert types(effects)[0] in ("conversation.item.created", "conversation.item.added")
    effects = client.send({"type": "response.create", "event_id": None, "response": {"metadata": None}})
    assert types(effects)[0] == "response.created"


@BOTH
def test_response_create_parameters_sent_as_null_are_not_given(dialect: Dialect) -> None:
    # LiveKit's event after every tool call (and for generate_reply without instructions): it
    # builds response.create with the SDK's pydantic model, whose unset fields go out as null.
    client = ProtocolClient(dialect)
    event = {
        "type": "response.create",
        "event_id": "response_create_4f1a",
        "response": {
            "instructions": None,
            "metadata": {"client_event_id": "response_create_4f1a"},
            "tool_choice": "auto",
        },
    }
    opened = client.send(event)
    assert types(opened)[0] == "response.created"
    assert opened.events[0]["response"]["metadata"] == {"client_event_id": "response_create_4f1a"}
    client.send({"type": "response.cancel"})
    # A required field stays required, and a null where the value matters is still refused.
    error = error_of(client, {"type": "response.create", "response": {"tools": [{"type": "function", "name": None}]}})
    assert (error["code"], error["param"]) == ("invalid_type", "response.tools[0].name")


@BOTH
def test_the_other_dialects_response_settings_are_accepted_and_checked(dialect: Dialect) -> None:
    modalities, tokens = (
        ("modalities", "max_response_output_tokens") if dialect is GA else ("output_modalities", "max_output_tokens")
    )
    client = ProtocolClient(dialect)
    opened = client.send({"type": "response.create", "response": {modalities: ["text"], tokens: 10}})
    assert opened.events[0]["response"]["max_output_tokens"] == 10
    assert client.session.response is not None and not client.session.response.audio
    client.send({"type": "response.cancel"})
    error = error_of(client, {"type": "response.create", "response": {modalities: ["video"]}})
    assert (error["code"], error["param"]) == ("invalid_value", f"response.{modalities}[0]")


@BOTH
@pytest.mark.parametrize("tokens", [0, 4097, -1])
def test_response_max_output_tokens_is_range_checked(dialect: Dialect, tokens: int) -> None:
    key = "max_output_tokens" if dialect is GA else "max_response_output_tokens"
    error = error_of(ProtocolClient(dialect), {"type": "response.create", "response": {key: tokens}})
    assert (error["code"], error["param"]) == ("invalid_value", f"response.{key}")


def test_turn_detection_durations_are_not_negative() -> None:
    session = {
        "type": "realtime",
        "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}}},
    }
    error = error_of(ProtocolClient(), {"type": "session.update", "session": session})
    assert (error["code"], error["param"]) == (
        "invalid_value",
        "session.audio.input.turn_detection.silence_duration_ms",
    )
    error = error_of(
        ProtocolClient(BETA), {"type": "session.update", "session": {"turn_detection": {"prefix_padding_ms": -5}}}
    )
    assert (error["code"], error["param"]) == ("invalid_value", "session.turn_detection.prefix_padding_ms")


def test_strings_that_are_stored_in_bounded_columns_are_bounded() -> None:
    client = ProtocolClient()
    error = error_of(
        client,
        {
            "type": "conversation.item.create",
            "item": {"id": "x" * 65, "type": "message", "role": "user", "content": []},
        },
    )
    assert (error["code"], error["param"]) == ("string_above_max_length", "item.id")
    session = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1", "language": "l" * 17}}}}
    error = error_of(client, {"type": "session.update", "session": session})
    assert (error["code"], error["param"]) == ("string_above_max_length", "session.audio.input.transcription.language")
    error = error_of(
        ProtocolClient(BETA), {"type": "session.update", "session": {"input_audio_transcription": {"model": "m" * 129}}}
    )
    assert (error["code"], error["param"]) == ("string_above_max_length", "session.input_audio_transcription.model")


def test_what_voice_agent_frameworks_send_is_accepted() -> None:
    """The settings and items LiveKit, openai-agents and pipecat send (see test_framework_contract)."""
    client = ProtocolClient()
    client.update(FRAMEWORK_SESSION)
    client.update({"type": "realtime", "tracing": None})
    history = {
        "id": "history_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hi."}],
    }
    assert types(client.send({"type": "conversation.item.create", "previous_item_id": "root", "item": history}))[0] == (
        "conversation.item.added"
    )
    response = {"metadata": {"client_event_id": "response_create_1"}}
    created = client.send({"type": "response.create", "event_id": "response_create_1", "response": response})
    assert created.events[0]["response"]["metadata"] == response["metadata"]


def test_an_mcp_item_is_echoed_without_fields_its_type_does_not_have() -> None:
    client = ProtocolClient()  # every event passes strict(): no `object` or `status` added
    item = {"type": "mcp_approval_response", "id": "mcp_1", "approval_request_id": "mcpr_1", "approve": True}
    effects = client.send({"type": "conversation.item.create", "item": item})
    assert types(effects) == ["conversation.item.added", "conversation.item.done"]
    assert set(effects.events[0]["item"]) == {"type", "approval_request_id", "approve", "id"}


def test_long_client_strings_are_shortened_in_messages() -> None:
    error = error_of(ProtocolClient(), {"type": "x" * 100_000})
    assert error["param"] == "type" and len(error["message"]) < 2000
    error = error_of(ProtocolClient(), {"type": "input_audio_buffer.clear", "k" * 100_000: 1})
    assert error["code"] == "unknown_parameter" and len(error["param"]) < 100


# --- the last-resort guard and the event id -----------------------------------------------------


def test_an_unexpected_failure_is_a_generic_server_error(caplog: pytest.LogCaptureFixture) -> None:
    client = ProtocolClient()

    def broken(event: dict[str, Any], model: Any) -> Effects:
        raise RuntimeError("secret internals /srv/app.py line 3")

    client.session._handlers["input_audio_buffer.clear"] = broken
    with caplog.at_level(logging.ERROR, logger="voice.protocol.session"):
        effects = client.send({"type": "input_audio_buffer.clear", "event_id": "evt_boom"})
    assert types(effects) == ["error"] and effects.client_event_id == "evt_boom"
    error = effects.events[0]["error"]
    assert (error["type"], error["code"], error["param"], error["event_id"]) == (
        "server_error",
        "server_error",
        None,
        "evt_boom",
    )
    assert "secret" not in error["message"] and "RuntimeError" not in error["message"]
    assert any(record.exc_info and "secret internals" in str(record.exc_info[1]) for record in caplog.records)
    assert types(client.send({"type": "response.create"}))[0] == "response.created"  # the session goes on


def test_receive_never_raises_even_for_non_text() -> None:
    client = ProtocolClient()
    for value in (None, 5, ["a"], object()):
        effects = client.session.receive(value)  # type: ignore[arg-type]
        assert types(effects) == ["error"]


def test_effects_carry_the_client_event_id() -> None:
    client = ProtocolClient()
    audio = {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "evt_a"}
    assert client.send(audio).client_event_id == "evt_a"
    assert client.send({"type": "input_audio_buffer.clear"}).client_event_id is None
    assert client.send({"type": "nope", "event_id": "evt_e"}).client_event_id == "evt_e"
    assert client.send("not json").client_event_id is None


def test_depth_scanner() -> None:
    assert not json_depth_exceeds("[" * 32 + "]" * 32)
    assert json_depth_exceeds("[" * 33 + "]" * 33)
    assert json_depth_exceeds('{"a":' * 33 + "1" + "}" * 33)
    assert not json_depth_exceeds('["' + "[" * 100 + '"]')  # inside a string
    assert not json_depth_exceeds('["\\"' + "{" * 100 + '"]')  # after an escaped quote, still inside
    assert json_depth_exceeds('["\\\\",' + "[" * 40 + "]" * 41)  # an escaped backslash ends nothing
    assert json_depth_exceeds('"unterminated' + '"' + "[" * 40)


def test_depth_scanner_is_linear_on_large_adversarial_text() -> None:
    size = 4 * 1024 * 1024
    for text in ('["' + '\\"' * (size // 2), '["[[[[' * (size // 6), "[" + "[]," * (size // 3) + "[]]"):
        start = time.perf_counter()
        json_depth_exceeds(text)
        assert time.perf_counter() - start < 2.0
