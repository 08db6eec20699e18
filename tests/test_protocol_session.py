"""RealtimeSession as a client sees it: no database, no model, every server event validated strictly.

The model is played by hand: `client.output(text, pcm)` is one 80 ms frame of Moshi's output, and
`client.hear(*probabilities)` one tick's voice-activity scores of the client's audio (one per 32 ms
window). Responses open on `response.create` or when server turn detection commits a user turn
(`client.user_turn()`); model output outside a response reaches nobody.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voice.protocol import Dialect, Effects, RealtimeSession, SessionOptions
from voice.protocol.audio import FRAME_SAMPLES
from voice.protocol.records import ConfigAccepted, ItemDeleted, ItemStored, ItemTruncated
from voice.protocol.responses import ResponsePolicy

from .strict import MODELS, strict

REPO = Path(__file__).resolve().parent.parent
BOTH = pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])

LOUD = (0.5 * np.sin(np.arange(FRAME_SAMPLES) * 0.1)).astype(np.float32)
QUIET = np.zeros(FRAME_SAMPLES, dtype=np.float32)
# Responses end after three quiet frames, so the tests stay short.
QUICK = ResponsePolicy(end_silence_ms=240)
# Voice-activity scores, one per 32 ms window: speech, and a pause long enough to end the turn
# under the default server_vad (silence_duration_ms 500: the 16th quiet window).
SPEECH = (0.9,) * 10
PAUSE = (0.0,) * 16

# The server events that were renamed at GA; every other name is the same in both dialects.
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


# The same setting in each dialect's `session.update`.
TURN_DETECTION_OFF = {
    Dialect.GA: {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
    Dialect.BETA: {"turn_detection": None},
}
TEXT_ONLY = {Dialect.GA: {"type": "realtime", "output_modalities": ["text"]}, Dialect.BETA: {"modalities": ["text"]}}


def wire(dialect: Dialect, ga_name: str) -> str:
    return BETA_NAMES.get(ga_name, ga_name) if dialect is Dialect.BETA else ga_name


def types(effects: Effects) -> list[str]:
    return [event["type"] for event in effects.events]


def pcm16_b64(samples: np.ndarray | list[int]) -> str:
    return base64.b64encode(np.asarray(samples, dtype="<i2").tobytes()).decode()


def audio_ms(ms: int) -> str:
    """`ms` milliseconds of a steady low signal as base64 pcm16 (24 samples a millisecond)."""
    return pcm16_b64(np.full(24 * ms, 1000))


class ProtocolClient:
    """A RealtimeSession driven like a client drives it; every server event passes strict() first."""

    def __init__(self, dialect: Dialect = Dialect.GA, policy: ResponsePolicy = QUICK) -> None:
        self.dialect = dialect
        self.session = RealtimeSession(SessionOptions(dialect=dialect, model_name="moshi-test", policy=policy))
        self.seen: list[dict[str, Any]] = []
        self.greeting = self._checked(self.session.start())

    def _checked(self, effects: Effects) -> Effects:
        for event in effects.events:
            strict(event, self.dialect)
        self.seen.extend(effects.events)
        return effects

    def send(self, event: dict[str, Any] | str | bytes) -> Effects:
        text = event if isinstance(event, str | bytes) else json.dumps(event)
        return self._checked(self.session.receive(text))

    def output(self, text: str | None = None, pcm: np.ndarray | None = LOUD) -> Effects:
        return self._checked(self.session.model_output(text, pcm))

    def hear(self, *probabilities: float, client_audio: bool = True) -> Effects:
        """One tick in which the model said nothing yet and the VAD scored the client's audio."""
        return self._checked(self.session.model_output(None, None, speech=probabilities, client_audio=client_audio))

    def user_turn(self, speech: tuple[float, ...] = SPEECH, pause: tuple[float, ...] = PAUSE) -> Effects:
        """The user speaks, then pauses: what server turn detection makes of it."""
        effects = self.hear(*speech)
        effects.extend(self.hear(*pause))
        return effects

    def close(self) -> Effects:
        return self._checked(self.session.close())

    def error(self, event: dict[str, Any] | str | bytes) -> dict[str, Any]:
        """Send an event that must fail; return the `error` object of the one event it gives."""
        return only_error(self.send(event))

    def update(self, session: dict[str, Any]) -> dict[str, Any]:
        """A `session.update` that must succeed; return the session of its `session.updated`."""
        effects = self.send({"type": "session.update", "session": session})
        assert types(effects) == ["session.updated"], effects.events
        return effects.events[0]["session"]

    def speak(self, *pieces: str | None, quiet_frames: int = 0) -> Effects:
        """One loud frame per piece, then some quiet ones; all effects together."""
        effects = Effects()
        for piece in pieces:
            effects.extend(self.output(piece, LOUD))
        for _ in range(quiet_frames):
            effects.extend(self.output(None, QUIET))
        return effects

    def user_text(self, text: str, item_id: str | None = None, **fields: Any) -> Effects:
        """A user text message; ``fields`` go on the event itself (previous_item_id, event_id)."""
        item: dict[str, Any] = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        if item_id is not None:
            item["id"] = item_id
        return self.send({"type": "conversation.item.create", "item": item, **fields})

    def completed_response(self, *pieces: str) -> tuple[str, Effects]:
        """A whole spoken response (opened by `response.create`); return its item id and effects."""
        effects = self.send({"type": "response.create"})
        effects.extend(self.speak(*pieces, quiet_frames=3))
        assert effects.events[-1]["type"] == "response.done"
        return effects.events[-1]["response"]["output"][0]["id"], effects


def only_error(effects: Effects) -> dict[str, Any]:
    """Exactly one `error` event and no other effect; its `error` object."""
    assert types(effects) == ["error"], types(effects)
    assert effects.frames == [] and effects.records == []
    return effects.events[0]["error"]


def item_events(dialect: Dialect) -> list[str]:
    """The events for one finished item entering the conversation."""
    if dialect is Dialect.GA:
        return ["conversation.item.added", "conversation.item.done"]
    return ["conversation.item.created"]


def stored(effects: Effects) -> list[ItemStored]:
    return [record for record in effects.records if isinstance(record, ItemStored)]


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


# --- conversation items -----------------------------------------------------------------------


@BOTH
def test_item_create_keeps_a_client_id_without_the_item_prefix(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    effects = client.user_text("hello", item_id="msg_001")
    assert types(effects) == item_events(dialect)
    for event in effects.events:
        assert event["item"]["id"] == "msg_001" and event["previous_item_id"] is None
    retrieved = client.send({"type": "conversation.item.retrieve", "item_id": "msg_001"})
    assert retrieved.events[0]["item"]["id"] == "msg_001"


@BOTH
def test_item_create_text_user_message(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    effects = client.user_text("What is the weather?")
    item = effects.events[-1]["item"]
    assert item["id"].startswith("item_")
    assert (item["type"], item["role"], item["status"]) == ("message", "user", "completed")
    assert item["content"] == [{"type": "input_text", "text": "What is the weather?"}]
    [record] = stored(effects)
    assert (record.item_id, record.role, record.text) == (item["id"], "user", "What is the weather?")


@BOTH
def test_item_create_with_previous_item_id(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    first = client.user_text("one").events[0]["item"]["id"]
    at_root = client.user_text("zero", previous_item_id="root")
    assert all(event["previous_item_id"] is None for event in at_root.events)
    after_first = client.user_text("two", previous_item_id=first)
    assert all(event["previous_item_id"] == first for event in after_first.events)
    # The conversation is now zero, one, two: a response's item follows "two".
    created = client.send({"type": "response.create"}).events
    entered = next(e for e in created if e["type"] in ("conversation.item.added", "conversation.item.created"))
    assert entered["previous_item_id"] == after_first.events[0]["item"]["id"]


def test_item_create_after_an_unknown_item_is_an_error() -> None:
    error = only_error(ProtocolClient().user_text("hi", previous_item_id="item_missing", event_id="evt_p"))
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "previous_item_id", "evt_p")


@BOTH
def test_item_create_with_a_duplicate_id_is_an_error(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.user_text("one", item_id="msg_dup")
    error = only_error(client.user_text("two", item_id="msg_dup", event_id="evt_dup"))
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "item.id", "evt_dup")
    retrieved = client.send({"type": "conversation.item.retrieve", "item_id": "msg_dup"}).events[0]["item"]
    assert retrieved["content"][0]["text"] == "one"


@pytest.mark.parametrize(
    ("item", "code", "param"),
    [
        ({"type": "message", "role": "user"}, "missing_required_parameter", "item.content"),
        ({"type": "function_call_output", "output": "{}"}, "missing_required_parameter", "item.call_id"),
        ({"type": "message", "role": "robot", "content": []}, "invalid_value", "item.role"),
        ({"type": "banana"}, "invalid_value", "item.type"),
        (
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": 5}]},
            "invalid_value",
            "item.content.0.text",
        ),
    ],
    ids=["no-content", "no-call-id", "bad-role", "bad-type", "bad-text"],
)
def test_item_create_names_the_invalid_parameter(item: dict[str, Any], code: str, param: str) -> None:
    """Not the name of a pydantic union member: the key the client sent, or should have sent."""
    error = ProtocolClient().error({"type": "conversation.item.create", "event_id": "evt_i", "item": item})
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_i")


@BOTH
def test_item_retrieve_returns_the_item(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    created = client.user_text("hello", item_id="msg_r").events[0]["item"]
    effects = client.send({"type": "conversation.item.retrieve", "item_id": "msg_r"})
    assert types(effects) == ["conversation.item.retrieved"]
    assert effects.events[0]["item"] == created


@BOTH
@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"type": "conversation.item.retrieve"}, "item_retrieve_invalid_item_id"),
        ({"type": "conversation.item.delete"}, "item_delete_invalid_item_id"),
        (
            {"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 0},
            "item_truncate_invalid_item_id",
        ),
    ],
    ids=["retrieve", "delete", "truncate"],
)
def test_unknown_item_id(dialect: Dialect, event: dict[str, Any], code: str) -> None:
    error = ProtocolClient(dialect).error({**event, "item_id": "item_nope", "event_id": "evt_u"})
    assert (error["code"], error["param"], error["event_id"]) == (code, "item_id", "evt_u")
    assert "item_nope" in error["message"]


@BOTH
def test_item_delete(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.user_text("bye", item_id="msg_d")
    effects = client.send({"type": "conversation.item.delete", "item_id": "msg_d"})
    assert types(effects) == ["conversation.item.deleted"] and effects.events[0]["item_id"] == "msg_d"
    assert effects.records == [ItemDeleted("msg_d")]
    error = client.error({"type": "conversation.item.retrieve", "item_id": "msg_d"})
    assert error["code"] == "item_retrieve_invalid_item_id"
    assert types(client.user_text("again", item_id="msg_d"))[0] != "error"  # the id is free again


# --- truncation -------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("audio_end_ms", "heard"),
    [
        (0, ""),
        (80, "Hello"),
        (100, "Hello there"),
        (160, "Hello there"),
        (161, "Hello there friend"),
        (480, "Hello there friend"),
    ],
)
def test_truncate_keeps_only_the_heard_text(dialect: Dialect, audio_end_ms: int, heard: str) -> None:
    client = ProtocolClient(dialect)
    # Pieces at frames 0, 1 and 2 (0, 80 and 160 ms), then three quiet frames: 480 ms of audio.
    item_id, _ = client.completed_response("Hello", " there", " friend")
    effects = client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}
    )
    assert types(effects) == ["conversation.item.truncated"]
    event = effects.events[0]
    assert (event["item_id"], event["content_index"], event["audio_end_ms"]) == (item_id, 0, audio_end_ms)
    assert effects.records == [ItemTruncated(item_id=item_id, audio_end_ms=audio_end_ms, heard_text=heard)]
    retrieved = client.send({"type": "conversation.item.retrieve", "item_id": item_id}).events[0]["item"]
    assert retrieved["content"][0]["transcript"] == heard


@BOTH
def test_truncate_during_a_response_stores_the_heard_text_when_it_ends(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    item_id = client.send({"type": "response.create"}).events[1]["item"]["id"]
    client.speak("Hello", " there")
    client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 80})
    done = client.speak(" friend", quiet_frames=3)
    [record] = stored(done)
    assert (record.item_id, record.role, record.text) == (item_id, "assistant", "Hello")
    transcripts = [
        e["transcript"] for e in done.events if e["type"] == wire(dialect, "response.output_audio_transcript.done")
    ]
    assert transcripts == ["Hello there friend"]  # what the model said, as it streamed
    assert done.events[-1]["response"]["output"][0]["content"][0]["transcript"] == "Hello"


def test_truncating_a_text_response_keeps_its_text_part_valid() -> None:
    client = ProtocolClient()
    opened = client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    item_id = opened.events[1]["item"]["id"]
    client.output("Hi", LOUD)
    client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 0})
    done = client.speak(quiet_frames=3)  # every event passes strict(): no `transcript` on a text part
    assert done.events[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": "Hi"}]


@BOTH
def test_truncate_beyond_the_audio_is_an_error(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    item_id, _ = client.completed_response("Hi")  # 4 frames: 320 ms
    truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "event_id": "evt_t"}
    for too_far in (321, -1):
        error = client.error({**truncate, "audio_end_ms": too_far})
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio_end_ms", "evt_t")
    assert types(client.send({**truncate, "audio_end_ms": 320})) == ["conversation.item.truncated"]


def test_truncate_of_a_user_item_is_an_error() -> None:
    client = ProtocolClient()
    client.user_text("hi", item_id="msg_u")
    error = client.error(
        {"type": "conversation.item.truncate", "item_id": "msg_u", "content_index": 0, "audio_end_ms": 0}
    )
    assert (error["code"], error["param"]) == ("invalid_value", "item_id")


# --- responses --------------------------------------------------------------------------------


def opening(dialect: Dialect) -> list[str]:
    entered = "conversation.item.added" if dialect is Dialect.GA else "conversation.item.created"
    return ["response.created", "response.output_item.added", entered, "response.content_part.added"]


def closing(dialect: Dialect, audio: bool = True) -> list[str]:
    if audio:
        parts = ["response.output_audio.done", "response.output_audio_transcript.done"]
    else:
        parts = ["response.output_text.done"]
    names = [*parts, "response.content_part.done"]
    if dialect is Dialect.GA:
        names.append("conversation.item.done")
    names += ["response.output_item.done", "response.done"]
    return [wire(dialect, name) for name in names]


@BOTH
def test_response_create_opens_a_response_at_once(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.user_text("hi", item_id="msg_q")
    effects = client.send({"type": "response.create", "response": {"metadata": {"turn": "7"}}})
    assert types(effects) == opening(dialect)
    created, item_added, entered, part_added = effects.events
    response = created["response"]
    assert response["id"].startswith("resp_") and response["status"] == "in_progress"
    assert response["metadata"] == {"turn": "7"} and response["output"] == [] and response["usage"] is None
    assert response["conversation_id"].startswith("conv_") and response["status_details"] is None
    item = item_added["item"]
    assert (item_added["response_id"], item_added["output_index"]) == (response["id"], 0)
    assert (item["role"], item["status"], item["content"]) == ("assistant", "in_progress", [])
    assert entered["item"] == item and entered["previous_item_id"] == "msg_q"
    assert (part_added["response_id"], part_added["item_id"]) == (response["id"], item["id"])
    assert (part_added["output_index"], part_added["content_index"]) == (0, 0)
    assert part_added["part"] == {"type": "audio", "transcript": ""}
    assert client.session.wants_output


@BOTH
def test_deltas_follow_the_openers_and_name_the_response(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    opened = client.send({"type": "response.create"})
    ref = {k: opened.events[-1][k] for k in ("response_id", "item_id", "output_index", "content_index")}
    effects = client.output("Hi", LOUD)
    assert types(effects) == [
        wire(dialect, "response.output_audio.delta"),
        wire(dialect, "response.output_audio_transcript.delta"),
    ]
    for event in effects.events:
        assert {k: event[k] for k in ref} == ref
    assert effects.events[1]["delta"] == "Hi"


@BOTH
def test_a_second_response_create_is_rejected_without_response_events(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    first = client.send({"type": "response.create"}).events[0]["response"]["id"]
    error = client.error({"type": "response.create", "event_id": "evt_again", "response": {"metadata": {"a": "b"}}})
    assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", "evt_again")
    assert first in error["message"]
    assert client.session.wants_output
    done = client.send({"type": "response.cancel"})
    assert [e["response"]["id"] for e in done.events if e["type"] == "response.done"] == [first]


@BOTH
def test_response_create_while_a_turn_detection_response_is_open_is_rejected(dialect: Dialect) -> None:
    """The race of PROTOCOL.md §6.8: the client asks for a response that the server already opened."""
    client = ProtocolClient(dialect)
    opened = client.user_turn()
    [response_id] = [e["response"]["id"] for e in opened.events if e["type"] == "response.created"]
    client.output("Hello", LOUD)
    error = client.error({"type": "response.create", "event_id": "evt_vad"})
    assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", "evt_vad")
    assert response_id in error["message"]
    assert client.session.wants_output


@BOTH
def test_response_cancel_ends_the_response_as_client_cancelled(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    response_id = client.send({"type": "response.create"}).events[0]["response"]["id"]
    client.output("Hello", LOUD)
    effects = client.send({"type": "response.cancel", "response_id": response_id})
    assert types(effects) == closing(dialect)
    assert types(effects).count("response.done") == 1
    response = effects.events[-1]["response"]
    assert (response["id"], response["status"]) == (response_id, "cancelled")
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    [item] = response["output"]
    assert item["status"] == "incomplete" and item["content"][0]["transcript"] == "Hello"
    [record] = stored(effects)
    assert (record.status, record.text, record.response_id) == ("incomplete", "Hello", response_id)
    assert not client.session.wants_output
    assert client.output(None, QUIET).events == []


@BOTH
def test_response_cancel_with_nothing_active(dialect: Dialect) -> None:
    error = ProtocolClient(dialect).error({"type": "response.cancel", "event_id": "evt_c"})
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "evt_c")
    assert error["message"].startswith("Cancellation failed")


def test_response_cancel_naming_another_response() -> None:
    client = ProtocolClient()
    client.send({"type": "response.create"})
    error = client.error({"type": "response.cancel", "response_id": "resp_other"})
    assert error["code"] == "response_cancel_not_active"
    assert client.session.wants_output


def test_response_create_with_tool_choice_required_cannot_be_honoured() -> None:
    client = ProtocolClient()
    error = client.error({"type": "response.create", "event_id": "evt_tc", "response": {"tool_choice": "required"}})
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "response.tool_choice", "evt_tc")
    assert not client.session.wants_output


@BOTH
def test_a_committed_turn_opens_a_response_and_the_model_output_closes_it(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(800)})
    opened = client.user_turn()
    committed = types(opened).index("input_audio_buffer.committed")
    assert types(opened)[committed + 1 + len(item_events(dialect)) :] == opening(dialect)
    user_item = opened.events[committed]["item_id"]
    assistant_entered = opened.events[-2]
    assert assistant_entered["previous_item_id"] == user_item
    assert opened.events[-4]["response"]["metadata"] is None
    assert client.session.wants_output

    audio_delta = wire(dialect, "response.output_audio.delta")
    transcript_delta = wire(dialect, "response.output_audio_transcript.delta")
    assert types(client.output(None, LOUD)) == [audio_delta]
    assert types(client.output("Hello", LOUD)) == [audio_delta, transcript_delta]
    assert types(client.output(" world", QUIET)) == [audio_delta, transcript_delta]  # text alone is activity
    assert types(client.output(None, QUIET)) == [audio_delta]
    assert types(client.output(None, QUIET)) == [audio_delta]

    last = client.output(None, QUIET)  # the third quiet frame: 240 ms of silence
    assert types(last) == [audio_delta, *closing(dialect)]
    by_type = {event["type"]: event for event in last.events}
    assert by_type[wire(dialect, "response.output_audio_transcript.done")]["transcript"] == "Hello world"
    assert by_type["response.content_part.done"]["part"] == {"type": "audio", "transcript": "Hello world"}
    part_type = "output_audio" if dialect is Dialect.GA else "audio"
    final_item = by_type["response.output_item.done"]["item"]
    assert final_item["status"] == "completed"
    assert final_item["content"] == [{"type": part_type, "transcript": "Hello world"}]
    if dialect is Dialect.GA:
        item_done = by_type["conversation.item.done"]
        assert item_done["item"] == final_item and item_done["previous_item_id"] == user_item
    response = by_type["response.done"]["response"]
    assert (response["status"], response["status_details"], response["output"]) == ("completed", None, [final_item])
    # Six 80 ms frames of 8 audio tokens each, and two text tokens.
    assert response["usage"]["output_token_details"] == {"text_tokens": 2, "audio_tokens": 48}
    assert response["usage"]["total_tokens"] == 50
    [record] = stored(last)
    assert (record.role, record.status, record.text, record.audio_ms) == ("assistant", "completed", "Hello world", 480)
    assert not client.session.wants_output


@BOTH
def test_model_output_outside_a_response_reaches_nobody(dialect: Dialect) -> None:
    """Moshi speaks whenever it likes; only what it says inside a response is sent."""
    client = ProtocolClient(dialect)
    assert client.speak("Hello", " there", quiet_frames=5).events == []
    assert client.hear(0.1, 0.0).events == []  # the client's audio, scored as no speech
    assert not client.session.wants_output
    client.send({"type": "response.create"})
    assert types(client.output("Hi", LOUD)) == [
        wire(dialect, "response.output_audio.delta"),
        wire(dialect, "response.output_audio_transcript.delta"),
    ]
    closed = client.speak(quiet_frames=3).events[-1]["response"]
    assert closed["output"][0]["content"][0]["transcript"] == "Hi"  # nothing from before it opened
    assert client.speak("Later", quiet_frames=2).events == []


def test_ticks_without_model_output_do_not_count_as_silence() -> None:
    """pcm None: the model has produced nothing yet for that tick (a restarted slot)."""
    client = ProtocolClient()
    client.send({"type": "response.create"})
    for _ in range(10):
        assert client.hear(0.0, 0.0).events == []
    assert client.session.wants_output
    closed = client.speak("Hi", quiet_frames=3).events[-1]["response"]
    assert closed["status"] == "completed"
    assert closed["usage"]["output_token_details"]["audio_tokens"] == 4 * 8  # only the four frames of output


def test_a_response_ends_after_end_silence_ms_of_the_default_policy() -> None:
    client = ProtocolClient(policy=ResponsePolicy())
    client.send({"type": "response.create"})
    client.output("Hi", LOUD)
    quiet = [client.output(None, QUIET) for _ in range(10)]  # 800 ms
    assert [types(q)[-1] for q in quiet].index("response.done") == 9


@BOTH
def test_no_response_opens_without_turn_detection(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.update(TURN_DETECTION_OFF[dialect])
    assert client.speak("Hello", " there", quiet_frames=5).events == []
    assert client.user_turn().events == []  # no speech_started, no commit
    assert not client.session.wants_output
    # A manual response.create still opens one, and the model's output goes into it.
    client.send({"type": "response.create"})
    assert client.speak("Hi", quiet_frames=3).events[-1]["response"]["status"] == "completed"


def test_no_response_opens_when_turn_detection_does_not_create_responses() -> None:
    client = ProtocolClient()
    client.update(
        {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad", "create_response": False}}}}
    )
    assert client.speak("Hello", quiet_frames=5).events == []
    turn = client.user_turn(pause=PAUSE * 2)  # semantic_vad "auto": a 600 ms pause ends the turn
    assert types(turn) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        *item_events(Dialect.GA),
    ]
    assert not client.session.wants_output


@BOTH
def test_max_ms_ends_the_response_as_completed(dialect: Dialect) -> None:
    """The server's turn-length limit ends the turn; it is not the client's max_output_tokens."""
    client = ProtocolClient(dialect, policy=ResponsePolicy(end_silence_ms=240, max_ms=400))
    client.send({"type": "response.create"})
    assert "response.done" not in types(client.speak("a", "b", "c", "d"))
    last = client.output("e", LOUD)  # the fifth frame reaches 400 ms
    assert types(last)[-len(closing(dialect)) :] == closing(dialect)
    response = last.events[-1]["response"]
    assert (response["status"], response["status_details"]) == ("completed", None)
    assert response["output"][0]["status"] == "completed"
    assert response["output"][0]["content"][0]["transcript"] == "abcde"
    [record] = stored(last)
    assert (record.status, record.text, record.audio_ms) == ("completed", "abcde", 400)
    assert not client.session.wants_output


def test_max_output_tokens_closes_the_response_as_incomplete() -> None:
    client = ProtocolClient()
    client.update({"type": "realtime", "max_output_tokens": 20})
    assert client.send({"type": "response.create"}).events[0]["response"]["max_output_tokens"] == 20
    client.output(None, LOUD)
    client.output(None, LOUD)  # 16 tokens
    response = client.output(None, LOUD).events[-1]["response"]  # 24 tokens
    assert (response["status"], response["status_details"]) == (
        "incomplete",
        {"type": "incomplete", "reason": "max_output_tokens"},
    )
    assert response["output"][0]["status"] == "incomplete"


@BOTH
def test_text_output_modality_gives_text_events(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.update(TEXT_ONLY[dialect])
    opened = client.send({"type": "response.create"})
    assert types(opened) == opening(dialect)
    assert opened.events[3]["part"] == {"type": "text", "text": ""}
    modalities = opened.events[0]["response"]["output_modalities" if dialect is Dialect.GA else "modalities"]
    assert modalities == ["text"]
    assert types(client.output("Hello", LOUD)) == [wire(dialect, "response.output_text.delta")]
    closed = client.speak(" you", quiet_frames=3)
    assert not any("audio" in name for name in types(closed))
    assert types(closed)[-len(closing(dialect, audio=False)) :] == closing(dialect, audio=False)
    by_type = {event["type"]: event for event in closed.events}
    assert by_type[wire(dialect, "response.output_text.done")]["text"] == "Hello you"
    assert by_type["response.content_part.done"]["part"] == {"type": "text", "text": "Hello you"}
    part_type = "output_text" if dialect is Dialect.GA else "text"
    assert by_type["response.done"]["response"]["output"][0]["content"] == [{"type": part_type, "text": "Hello you"}]
    assert stored(closed)[0].audio_ms == 0


def test_response_create_can_ask_for_text_only() -> None:
    client = ProtocolClient()
    opened = client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    assert opened.events[-1]["part"] == {"type": "text", "text": ""}
    assert types(client.output("Hi", LOUD)) == ["response.output_text.delta"]


@BOTH
def test_out_of_band_response_stays_out_of_the_conversation(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    opened = client.send(
        {"type": "response.create", "response": {"conversation": "none", "metadata": {"kind": "summary"}}}
    )
    assert types(opened) == ["response.created", "response.output_item.added", "response.content_part.added"]
    assert opened.events[0]["response"]["conversation_id"] is None
    assert opened.events[0]["response"]["metadata"] == {"kind": "summary"}
    closed = client.speak("Summary", quiet_frames=3)
    assert not any(name.startswith("conversation.item") for name in types(closed))
    assert closed.events[-1]["response"]["conversation_id"] is None
    assert closed.records == []
    error = client.error({"type": "conversation.item.retrieve", "item_id": opened.events[1]["item"]["id"]})
    assert error["code"] == "item_retrieve_invalid_item_id"


@BOTH
def test_close_with_an_open_response_keeps_what_was_said(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    response_id = client.send({"type": "response.create"}).events[0]["response"]["id"]
    client.speak("Hello", " there")
    effects = client.close()
    assert effects.events[-1]["response"]["status"] == "cancelled"
    [record] = stored(effects)
    assert (record.role, record.status, record.text) == ("assistant", "incomplete", "Hello there")
    assert (record.response_id, record.audio_ms) == (response_id, 160)
    assert not client.session.wants_output
    assert client.close() == Effects()


def test_close_with_nothing_open_does_nothing() -> None:
    assert ProtocolClient().close() == Effects()


def test_events_already_returned_are_never_rewritten() -> None:
    client = ProtocolClient()
    opened = client.send({"type": "response.create"})
    snapshot = json.loads(json.dumps(opened.events))
    item_id = opened.events[1]["item"]["id"]
    closed = client.speak("Hello", " there", quiet_frames=3).events[-1]
    closed_snapshot = json.loads(json.dumps(closed))
    client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 10})
    assert opened.events == snapshot
    assert closed == closed_snapshot


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
