"""RealtimeSession as a client sees it, no database and no model: the greeting, bad input, the
input audio buffer, dialects, and the package's dependencies."""

from __future__ import annotations

import base64
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from voice.protocol import Dialect
from voice.protocol.records import ConfigAccepted

from .protocol_client import (
    BETA_NAMES,
    BOTH,
    LOUD,
    PAUSE,
    REPO,
    SPEECH,
    TEXT_ONLY,
    ProtocolClient,
    audio_ms,
    item_events,
    pcm16_b64,
    stored,
    types,
)
from .strict import MODELS

# --- greeting ---------------------------------------------------------------------------------


def test_ga_greeting_is_session_created_with_the_full_session() -> None:
    client = ProtocolClient(Dialect.GA)
    assert types(client.greeting) == ["session.created"]
    session = client.greeting.events[0]["session"]
    assert session["type"] == "realtime" and session["object"] == "realtime.session"
    assert session["id"].startswith("sess_") and session["model"] == "moshi-test"
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
        "speed": 1.0,
    }
    assert session["max_output_tokens"] == "inf" and session["tools"] == [] and session["tracing"] is None
    assert "temperature" not in session  # a beta-only setting
    assert client.greeting.records == [ConfigAccepted(session=client.session.config)]


def test_beta_greeting_is_session_created_then_conversation_created() -> None:
    client = ProtocolClient(Dialect.BETA)
    assert types(client.greeting) == ["session.created", "conversation.created"]
    session = client.greeting.events[0]["session"]
    assert session["id"].startswith("sess_")
    assert session["modalities"] == ["audio", "text"] and session["voice"] == "alloy"
    assert session["input_audio_format"] == "pcm16" and session["output_audio_format"] == "pcm16"
    assert session["turn_detection"]["type"] == "server_vad" and session["temperature"] == 0.8
    # The beta SDK types `model` as a closed list of OpenAI names, so Moshi's name is not announced here.
    assert session["model"] == "gpt-4o-realtime-preview"
    conversation = client.greeting.events[1]["conversation"]
    assert conversation["id"].startswith("conv_") and conversation["object"] == "realtime.conversation"


@BOTH
def test_event_ids_are_unique_across_a_session(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(200)})
    client.send({"type": "input_audio_buffer.commit"})
    client.send("not json")
    client.completed_response("Hi", " there")
    client.send({"type": "response.create"})
    client.send({"type": "response.cancel"})
    client.user_turn()
    client.close()
    ids = [event["event_id"] for event in client.seen]
    assert len(client.seen) > 30 and len(set(ids)) == len(ids)


# --- bad input never kills the session --------------------------------------------------------

BAD_INPUT = [
    pytest.param("{not json", "invalid_event", None, None, id="malformed-json"),
    pytest.param(b"\xff\xfe{", "invalid_event", None, None, id="not-utf8"),
    pytest.param('[{"type": "response.create"}]', "invalid_event", None, None, id="json-array"),
    pytest.param({"event_id": "evt_1"}, "invalid_event", "type", "evt_1", id="missing-type"),
    pytest.param({"event_id": "evt_2", "type": 5}, "invalid_event", "type", "evt_2", id="non-string-type"),
    pytest.param({"event_id": "evt_3", "type": "session.explode"}, "invalid_value", "type", "evt_3", id="unknown-type"),
    pytest.param(
        {"event_id": "evt_4", "type": "input_audio_buffer.append", "audio": "not base64!"},
        "invalid_value",
        "audio",
        "evt_4",
        id="invalid-base64",
    ),
    pytest.param(
        {"event_id": "evt_5", "type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
        "invalid_value",
        "audio",
        "evt_5",
        id="odd-byte-count",
    ),
    pytest.param(
        {"event_id": "evt_6", "type": "input_audio_buffer.append"},
        "missing_required_parameter",
        "audio",
        "evt_6",
        id="missing-audio",
    ),
    pytest.param(
        {"event_id": "evt_7", "type": "input_audio_buffer.append", "audio": 1234},
        "invalid_type",
        "audio",
        "evt_7",
        id="audio-not-a-string",
    ),
    pytest.param({"type": "conversation.item.create"}, "missing_required_parameter", "item", None, id="missing-item"),
    pytest.param(
        {"event_id": "evt_8", "type": "conversation.item.truncate", "item_id": "x", "content_index": 0},
        "missing_required_parameter",
        "audio_end_ms",
        "evt_8",
        id="missing-audio-end-ms",
    ),
]


@BOTH
@pytest.mark.parametrize(("event", "code", "param", "event_id"), BAD_INPUT)
def test_bad_input_gives_one_error_and_the_session_goes_on(
    dialect: Dialect, event: Any, code: str, param: str | None, event_id: str | None
) -> None:
    client = ProtocolClient(dialect)
    error = client.error(event)
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, event_id)
    assert types(client.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert types(client.send({"type": "response.create"}))[0] == "response.created"


def test_bad_audio_is_not_counted_in_the_buffer() -> None:
    client = ProtocolClient()
    client.error({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"x" * 4801).decode()})
    assert client.error({"type": "input_audio_buffer.commit"})["code"] == "input_audio_buffer_commit_empty"


def test_output_audio_buffer_clear_is_a_quiet_no_op() -> None:
    client = ProtocolClient()
    assert client.send({"type": "output_audio_buffer.clear"}).events == []


# --- input audio buffer -----------------------------------------------------------------------


@BOTH
def test_commit_with_less_than_100_ms_is_commit_empty(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.send({"type": "input_audio_buffer.append", "audio": pcm16_b64(np.zeros(2399))})
    error = client.error({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
    assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "evt_commit"
    assert "Expected at least 100ms of audio" in error["message"] and "99" in error["message"]


def test_commit_with_no_audio_at_all_is_commit_empty() -> None:
    error = ProtocolClient().error({"type": "input_audio_buffer.commit"})
    assert error["code"] == "input_audio_buffer_commit_empty"


@BOTH
def test_commit_gives_committed_then_the_user_item(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(60)})
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(40)})
    effects = client.send({"type": "input_audio_buffer.commit"})
    assert types(effects) == ["input_audio_buffer.committed", *item_events(dialect)]
    committed, *entered = effects.events
    assert "previous_item_id" in committed and committed["previous_item_id"] is None
    for event in entered:
        assert "previous_item_id" in event and event["previous_item_id"] is None
        item = event["item"]
        assert item["id"] == committed["item_id"] and item["id"].startswith("item_")
        assert (item["type"], item["role"], item["status"]) == ("message", "user", "completed")
        assert item["content"] == [{"type": "input_audio", "transcript": None}]
    [record] = stored(effects)
    assert (record.item_id, record.role, record.audio_ms) == (committed["item_id"], "user", 100)


def test_a_commit_empties_the_buffer_and_links_to_the_previous_item() -> None:
    client = ProtocolClient()
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(100)})
    first = client.send({"type": "input_audio_buffer.commit"}).events[0]["item_id"]
    assert client.error({"type": "input_audio_buffer.commit"})["code"] == "input_audio_buffer_commit_empty"
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(150)})
    effects = client.send({"type": "input_audio_buffer.commit"})
    assert all(event["previous_item_id"] == first for event in effects.events)
    assert stored(effects)[0].audio_ms == 150


@BOTH
def test_clear_empties_the_buffer(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    assert types(client.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(300)})
    assert types(client.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert client.error({"type": "input_audio_buffer.commit"})["code"] == "input_audio_buffer_commit_empty"


# --- dialects ---------------------------------------------------------------------------------


def exercise_everything(client: ProtocolClient) -> None:
    """Drive a session through every kind of server event it can send."""
    text_only = {k: v for k, v in TEXT_ONLY[client.dialect].items() if k != "type"}
    client.update({"type": "realtime"} if client.dialect is Dialect.GA else {})
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(120)})
    user_item = client.send({"type": "input_audio_buffer.commit"}).events[0]["item_id"]
    client.send({"type": "input_audio_buffer.clear"})
    client.user_text("hi")
    item_id, _ = client.completed_response("Hello", " there")
    client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 80})
    client.send({"type": "conversation.item.retrieve", "item_id": item_id})
    client.send({"type": "conversation.item.delete", "item_id": user_item})
    client.send({"type": "response.create", "response": text_only})
    client.speak("Text", quiet_frames=3)
    client.send({"type": "response.create"})
    client.send({"type": "response.create"})
    client.send({"type": "response.cancel"})
    client.send({"type": "response.cancel"})
    client.user_turn()  # speech_started, speech_stopped, committed, and a response
    client.output("Bye", LOUD)
    client.hear(*SPEECH)  # barge-in: the response ends cancelled
    client.hear(*PAUSE)  # and the new turn opens the next one
    client.output("Again", LOUD)
    client.close()


@BOTH
def test_no_event_crosses_dialects(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    exercise_everything(client)
    other = Dialect.BETA if dialect is Dialect.GA else Dialect.GA
    sent = {event["type"] for event in client.seen}
    assert sent <= set(MODELS[dialect])
    assert not sent & (set(MODELS[other]) - set(MODELS[dialect])), sent
    renamed = set(BETA_NAMES) if dialect is Dialect.BETA else set(BETA_NAMES.values())
    assert not sent & renamed
    assert len(sent) >= 20


# --- the package's dependencies ---------------------------------------------------------------


def test_the_protocol_package_imports_neither_django_nor_torch() -> None:
    code = (
        "import sys, voice.protocol\n"
        "heavy = sorted(m for m in ('django', 'torch', 'channels') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
