"""`session.update` in both dialects: what voice-agent frameworks send is accepted, stored and reflected;
invalid updates give one precise `error` and leave the session as it was.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from voice.protocol import Dialect
from voice.protocol.records import ConfigAccepted

from .protocol_client import ProtocolClient, types

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def ga_update(client: ProtocolClient, **fields: Any) -> dict[str, Any]:
    """A GA `session.update` with `type` and the given top-level fields; returns the updated session."""
    return client.update({"type": "realtime", **fields})


def audio_update(client: ProtocolClient, direction: str, **fields: Any) -> dict[str, Any]:
    return ga_update(client, audio={direction: fields})


def current(client: ProtocolClient) -> dict[str, Any]:
    return copy.deepcopy(client.session.config)


# --- GA: accepted and reflected ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-realtime", "gpt-realtime-2.1", "gpt-4o-realtime-preview"])
def test_a_foreign_model_name_is_accepted_and_reflected(model: str) -> None:
    assert ga_update(ProtocolClient(), model=model)["model"] == model


@pytest.mark.parametrize("tracing", ["auto", None, {"workflow_name": "support", "group_id": "g1"}])
def test_tracing(tracing: Any) -> None:
    client = ProtocolClient()
    if tracing is None:
        ga_update(client, tracing="auto")
    assert ga_update(client, tracing=tracing)["tracing"] == tracing


def test_semantic_vad_with_eagerness_and_response_flags() -> None:
    turn = {"type": "semantic_vad", "eagerness": "high", "create_response": False, "interrupt_response": False}
    session = audio_update(ProtocolClient(), "input", turn_detection=turn)
    assert session["audio"]["input"]["turn_detection"] == turn


def test_semantic_vad_alone_is_completed_with_its_defaults() -> None:
    session = audio_update(ProtocolClient(), "input", turn_detection={"type": "semantic_vad"})
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }


def test_server_vad_fields_update_one_at_a_time() -> None:
    client = ProtocolClient()
    audio_update(client, "input", turn_detection={"type": "server_vad", "threshold": 0.7})
    session = audio_update(client, "input", turn_detection={"type": "server_vad", "silence_duration_ms": 600})
    turn = session["audio"]["input"]["turn_detection"]
    assert (turn["threshold"], turn["silence_duration_ms"], turn["prefix_padding_ms"]) == (0.7, 600, 300)
    assert turn["create_response"] is True and turn["idle_timeout_ms"] is None


def test_turn_detection_null_turns_it_off() -> None:
    assert audio_update(ProtocolClient(), "input", turn_detection=None)["audio"]["input"]["turn_detection"] is None


def test_input_transcription_and_noise_reduction() -> None:
    client = ProtocolClient()
    session = audio_update(
        client, "input", transcription={"model": "gpt-4o-mini-transcribe", "language": "en"}, noise_reduction=None
    )
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "en"}
    assert session["audio"]["input"]["noise_reduction"] is None
    session = audio_update(client, "input", noise_reduction={"type": "near_field"})
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"


@pytest.mark.parametrize("voice", ["ash", "marin", "cedar"])
def test_voice(voice: str) -> None:
    assert audio_update(ProtocolClient(), "output", voice=voice)["audio"]["output"]["voice"] == voice


@pytest.mark.parametrize("speed", [0.25, 1.2, 1.5])
def test_speed(speed: float) -> None:
    assert audio_update(ProtocolClient(), "output", speed=speed)["audio"]["output"]["speed"] == speed


@pytest.mark.parametrize("tokens", ["inf", 1, 4096])
def test_max_output_tokens(tokens: int | str) -> None:
    assert ga_update(ProtocolClient(), max_output_tokens=tokens)["max_output_tokens"] == tokens


@pytest.mark.parametrize("choice", ["auto", "none", {"type": "function", "name": "get_weather"}])
def test_tool_choice(choice: Any) -> None:
    assert ga_update(ProtocolClient(), tools=[WEATHER_TOOL], tool_choice=choice)["tool_choice"] == choice


def test_tools_empty_and_with_a_function() -> None:
    client = ProtocolClient()
    assert ga_update(client, tools=[WEATHER_TOOL])["tools"] == [WEATHER_TOOL]
    assert ga_update(client, tools=[])["tools"] == []


@pytest.mark.parametrize("modalities", [["text"], ["audio"]])
def test_output_modalities(modalities: list[str]) -> None:
    assert ga_update(ProtocolClient(), output_modalities=modalities)["output_modalities"] == modalities


def test_a_framework_style_update_is_accepted_whole() -> None:
    """Everything a voice-agent framework sends in its first update, in one event."""
    update = {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "You are a helpful assistant.",
        "output_modalities": ["audio"],
        "tracing": "auto",
        "max_output_tokens": "inf",
        "tool_choice": "auto",
        "tools": [WEATHER_TOOL],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "noise_reduction": None,
                "turn_detection": {
                    "type": "semantic_vad",
                    "eagerness": "medium",
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.1},
        },
    }
    client = ProtocolClient()
    effects = client.send({"type": "session.update", "session": update})
    assert types(effects) == ["session.updated"]
    session = effects.events[0]["session"]
    for key, value in update.items():
        if key != "audio":
            assert session[key] == value, key
    assert session["audio"] == update["audio"]
    assert session["id"] == client.greeting.events[0]["session"]["id"]
    assert effects.records == [ConfigAccepted(session=client.session.config)]


@pytest.mark.parametrize(
    "partial",
    [
        {"instructions": "Be brief."},
        {"tracing": None},
        {"audio": {"output": {"speed": 0.9}}},
        {"audio": {"input": {"noise_reduction": {"type": "far_field"}}}},
        {"tools": []},
    ],
)
def test_a_partial_update_changes_only_what_it_names(partial: dict[str, Any]) -> None:
    client = ProtocolClient()
    ga_update(
        client,
        instructions="Start.",
        tracing="auto",
        tools=[WEATHER_TOOL],
        audio={"output": {"voice": "ash", "speed": 1.3}, "input": {"transcription": {"model": "whisper-1"}}},
    )
    before = current(client)
    session = ga_update(client, **partial)
    expected = copy.deepcopy(before)
    for key, value in partial.items():
        if key == "audio":
            for direction, fields in value.items():
                expected["audio"][direction].update(fields)
        else:
            expected[key] = value
    assert client.session.config == expected
    assert session["audio"]["output"]["voice"] == "ash"


def test_an_update_without_type_is_taken_as_realtime() -> None:
    """The SDK sends `session` as given, even without `type`; the server is lenient about it."""
    session = ProtocolClient().update({"instructions": "Hi."})
    assert (session["type"], session["instructions"]) == ("realtime", "Hi.")


def test_settings_take_effect_on_the_next_response() -> None:
    client = ProtocolClient()
    audio_update(client, "output", voice="marin")
    response = client.send({"type": "response.create"}).events[0]["response"]
    assert response["audio"]["output"]["voice"] == "marin"
    client.send({"type": "response.cancel"})
    audio_update(client, "output", voice="cedar")
    opened = client.user_turn()  # a response opened by turn detection takes the settings too
    [response] = [event["response"] for event in opened.events if event["type"] == "response.created"]
    assert response["audio"]["output"]["voice"] == "cedar"


# --- GA: invalid updates ----------------------------------------------------------------------

GA_INVALID = [
    pytest.param({"voice": "ash"}, "unknown_parameter", "session.voice", id="beta-voice"),
    pytest.param({"temperature": 0.7}, "unknown_parameter", "session.temperature", id="beta-temperature"),
    pytest.param({"modalities": ["audio"]}, "unknown_parameter", "session.modalities", id="beta-modalities"),
    pytest.param(
        {"audio": {"output": {"volume": 2}}}, "unknown_parameter", "session.audio.output.volume", id="unknown-nested"
    ),
    pytest.param(
        {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "extreme"}}}},
        "invalid_value",
        "session.audio.input.turn_detection.eagerness",
        id="bad-eagerness",
    ),
    pytest.param(
        {"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
        "invalid_value",
        "session.audio.input.turn_detection.type",
        id="bad-turn-detection-type",
    ),
    pytest.param(
        {"audio": {"input": {"noise_reduction": {"type": "loud_room"}}}},
        "invalid_value",
        "session.audio.input.noise_reduction.type",
        id="bad-noise-reduction",
    ),
    pytest.param({"tool_choice": "sometimes"}, "invalid_value", "session.tool_choice", id="bad-tool-choice"),
    pytest.param(
        {"tools": [{"type": "function", "name": 5}]}, "invalid_type", "session.tools[0].name", id="bad-tool-name"
    ),
    pytest.param({"output_modalities": ["video"]}, "invalid_value", "session.output_modalities[0]", id="bad-modality"),
    pytest.param(
        {"output_modalities": ["audio", "text"]}, "invalid_value", "session.output_modalities", id="both-modalities"
    ),
    pytest.param(
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
        id="threshold-above-1",
    ),
    pytest.param(
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": -0.1}}}},
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
        id="threshold-below-0",
    ),
    pytest.param({"audio": {"output": {"speed": 2.0}}}, "invalid_value", "session.audio.output.speed", id="speed-high"),
    pytest.param({"audio": {"output": {"speed": 0.1}}}, "invalid_value", "session.audio.output.speed", id="speed-low"),
    pytest.param({"max_output_tokens": 0}, "invalid_value", "session.max_output_tokens", id="tokens-zero"),
    pytest.param({"max_output_tokens": 4097}, "invalid_value", "session.max_output_tokens", id="tokens-too-many"),
    pytest.param(
        {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        "unsupported_audio_format",
        "session.audio.input.format",
        id="pcmu-in",
    ),
    pytest.param(
        {"audio": {"output": {"format": {"type": "audio/pcma"}}}},
        "unsupported_audio_format",
        "session.audio.output.format",
        id="pcma-out",
    ),
    pytest.param({"type": "transcription"}, "invalid_value", "session.type", id="transcription-session"),
]


@pytest.mark.parametrize(("session", "code", "param"), GA_INVALID)
def test_an_invalid_ga_update_is_one_error_and_changes_nothing(session: dict[str, Any], code: str, param: str) -> None:
    client = ProtocolClient()
    ga_update(client, instructions="Keep me.", audio={"output": {"voice": "ash"}})
    before = current(client)
    error = client.error({"type": "session.update", "event_id": "evt_upd", "session": {"type": "realtime", **session}})
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_upd")
    assert error["type"] == "invalid_request_error" and error["message"]
    assert client.session.config == before
    # The session goes on, and a valid update after the error still applies.
    assert ga_update(client, instructions="Next.")["audio"]["output"]["voice"] == "ash"


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ({"type": "session.update"}, "missing_required_parameter", "session"),
        ({"type": "session.update", "session": "realtime"}, "invalid_type", "session"),
        ({"type": "session.update", "session": None}, "invalid_type", "session"),
    ],
)
def test_a_session_update_without_a_session_object(event: dict[str, Any], code: str, param: str) -> None:
    client = ProtocolClient()
    before = current(client)
    error = client.error({**event, "event_id": "evt_s"})
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_s")
    assert client.session.config == before


# --- beta -------------------------------------------------------------------------------------


def test_beta_update_reflects_every_field() -> None:
    update = {
        "modalities": ["audio", "text"],
        "instructions": "Be brief.",
        "voice": "ash",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": {"model": "whisper-1"},
        "input_audio_noise_reduction": None,
        "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 500},
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "temperature": 0.7,
        "max_response_output_tokens": 1000,
        "speed": 1.1,
        "tracing": "auto",
    }
    client = ProtocolClient(Dialect.BETA)
    session = client.update(update)
    for key, value in update.items():
        if key != "turn_detection":
            assert session[key] == value, key
    assert session["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.6,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }
    assert client.session.config["audio"]["output"]["voice"] == "ash"  # stored in the one (GA) shape


def test_beta_semantic_vad_and_null_turn_detection() -> None:
    client = ProtocolClient(Dialect.BETA)
    turn = client.update({"turn_detection": {"type": "semantic_vad", "eagerness": "low"}})["turn_detection"]
    assert turn == {"type": "semantic_vad", "eagerness": "low", "create_response": True, "interrupt_response": True}
    assert client.update({"turn_detection": None})["turn_detection"] is None


@pytest.mark.parametrize(("modalities", "shown"), [(["text"], ["text"]), (["audio", "text"], ["audio", "text"])])
def test_beta_modalities(modalities: list[str], shown: list[str]) -> None:
    assert ProtocolClient(Dialect.BETA).update({"modalities": modalities})["modalities"] == shown


@pytest.mark.parametrize("tokens", ["inf", 1, 4096])
def test_beta_max_response_output_tokens(tokens: int | str) -> None:
    session = ProtocolClient(Dialect.BETA).update({"max_response_output_tokens": tokens})
    assert session["max_response_output_tokens"] == tokens


def test_beta_temperature_and_voice_reach_the_response() -> None:
    client = ProtocolClient(Dialect.BETA)
    client.update({"temperature": 0.9, "voice": "marin"})
    response = client.send({"type": "response.create"}).events[0]["response"]
    assert (response["temperature"], response["voice"], response["output_audio_format"]) == (0.9, "marin", "pcm16")


def test_beta_model_names_the_client_model_when_the_sdk_knows_it() -> None:
    assert ProtocolClient(Dialect.BETA).update({"model": "gpt-realtime"})["model"] == "gpt-realtime"


def test_beta_partial_update_changes_only_what_it_names() -> None:
    client = ProtocolClient(Dialect.BETA)
    client.update({"voice": "ash", "instructions": "Start.", "temperature": 0.7})
    before = client.update({})
    after = client.update({"speed": 1.2})
    assert after == {**before, "speed": 1.2}


BETA_INVALID = [
    pytest.param({"type": "realtime"}, "unknown_parameter", "session.type", id="ga-type"),
    pytest.param(
        {"output_modalities": ["audio"]}, "unknown_parameter", "session.output_modalities", id="ga-modalities"
    ),
    pytest.param({"input_audio_format": "mp3"}, "invalid_value", "session.input_audio_format", id="bad-format"),
    pytest.param(
        {"turn_detection": {"type": "semantic_vad", "eagerness": "extreme"}},
        "invalid_value",
        "session.turn_detection.eagerness",
        id="bad-eagerness",
    ),
    pytest.param(
        {"input_audio_format": "g711_ulaw"}, "unsupported_audio_format", "session.input_audio_format", id="ulaw-in"
    ),
    pytest.param(
        {"output_audio_format": "g711_alaw"}, "unsupported_audio_format", "session.output_audio_format", id="alaw-out"
    ),
    pytest.param(
        {"turn_detection": {"type": "server_vad", "threshold": 2}},
        "invalid_value",
        "session.turn_detection.threshold",
        id="threshold",
    ),
    pytest.param({"speed": 3}, "invalid_value", "session.speed", id="speed"),
    pytest.param(
        {"max_response_output_tokens": 5000}, "invalid_value", "session.max_response_output_tokens", id="tokens"
    ),
]


@pytest.mark.parametrize(("session", "code", "param"), BETA_INVALID)
def test_an_invalid_beta_update_names_the_beta_parameter(session: dict[str, Any], code: str, param: str) -> None:
    client = ProtocolClient(Dialect.BETA)
    client.update({"voice": "ash"})
    before = current(client)
    error = client.error({"type": "session.update", "event_id": "evt_b", "session": session})
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_b")
    assert client.session.config == before
    assert client.update({"instructions": "Next."})["voice"] == "ash"
