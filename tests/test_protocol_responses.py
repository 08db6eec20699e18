"""Responses through RealtimeSession: create, cancel, turns, limits, modalities, out-of-band."""

from __future__ import annotations

import json

from voice.protocol import Dialect, Effects
from voice.protocol.responses import ResponsePolicy

from .protocol_client import (
    BOTH,
    LOUD,
    PAUSE,
    QUIET,
    TEXT_ONLY,
    TURN_DETECTION_OFF,
    ProtocolClient,
    audio_ms,
    closing,
    item_events,
    opening,
    stored,
    types,
    wire,
)

# --- responses --------------------------------------------------------------------------------


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
    """A race clients rely on (docs/protocol-mapping.md): the client asks for a response the server already opened."""
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
