"""Conversation items through RealtimeSession: create with client ids, retrieve, delete, truncate."""

from __future__ import annotations

from typing import Any

import pytest

from voice.protocol import Dialect
from voice.protocol.records import ItemDeleted, ItemTruncated

from .protocol_client import (
    BOTH,
    LOUD,
    ProtocolClient,
    item_events,
    only_error,
    stored,
    types,
    wire,
)

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
            "invalid_type",
            "item.content[0].text",
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


@BOTH
def test_a_stored_item_carries_no_server_bookkeeping(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    item_id, effects = client.completed_response("Hello", " there")
    entry = client.session.conversation.entry(item_id, "invalid_value", "reading")
    # What truncation needs lives beside the item, not inside the dict the client is sent.
    assert (entry.audio_ms, entry.pieces, entry.heard) == (400, [(0, "Hello"), (1, " there")], None)
    retrieved = client.send({"type": "conversation.item.retrieve", "item_id": item_id}).events[0]["item"]
    assert retrieved == entry.item == effects.events[-1]["response"]["output"][0]
    assert set(entry.item) == {"id", "type", "role", "status", "content", "object"}
    client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 80})
    assert entry.heard == "Hello" and entry.item["content"][0]["transcript"] == "Hello"
    assert set(entry.item) == {"id", "type", "role", "status", "content", "object"}


@BOTH
def test_truncate_during_a_response_then_delete_still_stores_the_heard_text(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    item_id = client.send({"type": "response.create"}).events[1]["item"]["id"]
    client.speak("Hello", " there")
    client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 80})
    client.send({"type": "conversation.item.delete", "item_id": item_id})
    done = client.speak(" friend", quiet_frames=3)
    [record] = stored(done)
    assert (record.item_id, record.text) == (item_id, "Hello")
    assert done.events[-1]["response"]["output"][0]["content"][0]["transcript"] == "Hello"


def test_an_item_created_again_under_a_deleted_id_keeps_nothing_of_the_old_one() -> None:
    client = ProtocolClient()
    item = {"type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": "Old."}]}
    client.send({"type": "conversation.item.create", "item": {**item, "id": "msg_a"}})
    client.send({"type": "conversation.item.truncate", "item_id": "msg_a", "content_index": 0, "audio_end_ms": 0})
    client.send({"type": "conversation.item.delete", "item_id": "msg_a"})
    again = {**item, "id": "msg_a", "content": [{"type": "output_audio", "transcript": "New."}]}
    [record] = stored(client.send({"type": "conversation.item.create", "item": again}))
    assert record.text == "New."  # not the heard text ("") of the deleted item's truncation
    retrieved = client.send({"type": "conversation.item.retrieve", "item_id": "msg_a"}).events[0]["item"]
    assert retrieved["content"][0]["transcript"] == "New."


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
