"""Per-session budgets (voice.protocol.limits): what goes over one is an `error` naming the budget and
its setting, and nothing of it is stored or kept; what is at the limit is accepted."""

from __future__ import annotations

from typing import Any

import pytest

from voice.conf import DEFAULTS
from voice.protocol import Dialect, RealtimeSession, SessionLimits, SessionOptions
from voice.protocol.limits import MAX_OTHER_SETTINGS_BYTES, TokenBucket, item_text_bytes, json_bytes
from voice.protocol.records import ConfigAccepted, ItemStored

from .protocol_client import BOTH, QUICK, ProtocolClient, audio_ms, types

GA, BETA = Dialect.GA, Dialect.BETA


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def client_with(dialect: Dialect = GA, now: Any = None, **limits: int) -> ProtocolClient:
    """A ProtocolClient whose session has these budgets (and this clock)."""
    client = ProtocolClient(dialect)
    options = SessionOptions(dialect=dialect, model_name="moshi-test", policy=QUICK, limits=SessionLimits(**limits))
    if now is not None:
        options = SessionOptions(**{**options.__dict__, "now": now})
    client.session = RealtimeSession(options)
    client.seen = []
    client.greeting = client._checked(client.session.start())
    return client


def budget_error(client: ProtocolClient, event: dict[str, Any], code: str, param: str | None, setting: str) -> None:
    error = client.error({**event, "event_id": "evt_budget"})  # one error, no frames, no records
    assert (error["type"], error["code"], error["param"], error["event_id"]) == (
        "invalid_request_error",
        code,
        param,
        "evt_budget",
    )
    assert setting in error["message"], error["message"]


def session_update(dialect: Dialect, **session: Any) -> dict[str, Any]:
    return {"type": "session.update", "session": {"type": "realtime", **session} if dialect is GA else session}


def user_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    if item_id:
        item["id"] = item_id
    return {"type": "conversation.item.create", "item": item}


# --- the settings -------------------------------------------------------------------------------


def test_limits_default_to_the_settings_defaults() -> None:
    limits = SessionLimits()
    for name in limits.__dataclass_fields__:
        assert getattr(limits, name) == DEFAULTS[name.upper()], name


def test_limits_from_config_reads_the_upper_case_keys() -> None:
    limits = SessionLimits.from_config({"MAX_ITEMS": "7", "MAX_EVENTS_PER_SECOND": 3, "UNRELATED": 1})
    assert (limits.max_items, limits.max_events_per_second) == (7, 3)
    assert limits.max_tools_bytes == SessionLimits().max_tools_bytes  # missing: the default
    assert SessionLimits.from_config(DEFAULTS) == SessionLimits()


# --- instructions, tools, metadata ----------------------------------------------------------------


@BOTH
def test_session_instructions_at_the_limit_and_over_it(dialect: Dialect) -> None:
    client = client_with(dialect, max_instructions_bytes=12)
    at_limit = "é" * 6  # 12 bytes of UTF-8, 6 characters
    assert client.update(session_update(dialect, instructions=at_limit)["session"])["instructions"] == at_limit
    before = client.session.config
    budget_error(
        client,
        session_update(dialect, instructions=at_limit + "x"),
        "instructions_too_large",
        "session.instructions",
        "REALTIME_MAX_INSTRUCTIONS_BYTES",
    )
    assert client.session.config == before


@BOTH
def test_response_instructions_over_the_limit(dialect: Dialect) -> None:
    client = client_with(dialect, max_instructions_bytes=10)
    event = {"type": "response.create", "response": {"instructions": "x" * 11}}
    budget_error(client, event, "instructions_too_large", "response.instructions", "REALTIME_MAX_INSTRUCTIONS_BYTES")
    assert client.session.response is None
    assert (
        types(client.send({"type": "response.create", "response": {"instructions": "x" * 10}}))[0] == "response.created"
    )


TOOL = {"type": "function", "name": "get_weather", "description": "Weather.", "parameters": {"type": "object"}}


@BOTH
def test_session_tools_at_the_limit_and_over_it(dialect: Dialect) -> None:
    size = json_bytes([TOOL])
    client = client_with(dialect, max_tools_bytes=size)
    assert client.update(session_update(dialect, tools=[TOOL])["session"])["tools"] == [TOOL]
    budget_error(
        client,
        session_update(dialect, tools=[TOOL, TOOL]),
        "tools_too_large",
        "session.tools",
        "REALTIME_MAX_TOOLS_BYTES",
    )
    assert client.session.config["tools"] == [TOOL]


@BOTH
def test_response_tools_and_metadata_over_the_limit(dialect: Dialect) -> None:
    metadata = {"topic": "weather"}
    client = client_with(dialect, max_tools_bytes=json_bytes([TOOL]) - 1, max_metadata_bytes=json_bytes(metadata))
    budget_error(
        client,
        {"type": "response.create", "response": {"tools": [TOOL]}},
        "tools_too_large",
        "response.tools",
        "REALTIME_MAX_TOOLS_BYTES",
    )
    budget_error(
        client,
        {"type": "response.create", "response": {"metadata": {"topic": "weather!"}}},
        "metadata_too_large",
        "response.metadata",
        "REALTIME_MAX_METADATA_BYTES",
    )
    assert client.session.response is None
    opened = client.send({"type": "response.create", "response": {"metadata": metadata}})
    assert opened.events[0]["response"]["metadata"] == metadata


def test_the_rest_of_the_session_is_bounded_too() -> None:
    client = client_with(GA)
    prompt = {"id": "pmpt_1", "variables": {"city": "x" * MAX_OTHER_SETTINGS_BYTES}}
    budget_error(
        client, session_update(GA, prompt=prompt), "session_too_large", "session", str(MAX_OTHER_SETTINGS_BYTES)
    )
    assert client.session.config["prompt"] is None
    client.update(session_update(GA, prompt={"id": "pmpt_1", "variables": {"city": "x" * 1000}})["session"])


# --- items and the conversation --------------------------------------------------------------------


@BOTH
def test_item_text_at_the_limit_and_over_it(dialect: Dialect) -> None:
    client = client_with(dialect, max_item_text_bytes=10)
    assert types(client.send(user_item("0123456789", "msg_ok")))[0] != "error"
    budget_error(client, user_item("0123456789a", "msg_big"), "item_too_large", "item", "REALTIME_MAX_ITEM_TEXT_BYTES")
    assert "msg_big" not in client.session.conversation
    # All the item's text together: two parts of 6 bytes are 12.
    two_parts = user_item("", "msg_two")
    two_parts["item"]["content"] = [{"type": "input_text", "text": "abcdef"}, {"type": "input_text", "text": "ghijkl"}]
    budget_error(client, two_parts, "item_too_large", "item", "REALTIME_MAX_ITEM_TEXT_BYTES")
    call_output = {"type": "function_call_output", "call_id": "call_1", "output": "o" * 11}
    budget_error(
        client,
        {"type": "conversation.item.create", "item": call_output},
        "item_too_large",
        "item",
        "REALTIME_MAX_ITEM_TEXT_BYTES",
    )


def test_item_text_counts_every_text_field() -> None:
    item = {
        "type": "message",
        "content": [{"type": "input_text", "text": "ab"}, {"type": "input_audio", "transcript": "cd", "audio": "AAAA"}],
        "arguments": "ef",
        "output": "g",
    }
    assert item_text_bytes(item) == 7


@BOTH
def test_a_full_conversation_refuses_client_items_until_one_is_deleted(dialect: Dialect) -> None:
    client = client_with(dialect, max_items=3)
    for index in range(3):
        assert types(client.send(user_item("hi", f"msg_{index}")))[0] != "error"
    budget_error(client, user_item("hi", "msg_3"), "conversation_full", "item", "REALTIME_MAX_ITEMS")
    assert len(client.session.conversation) == 3 and "msg_3" not in client.session.conversation
    client.send({"type": "conversation.item.delete", "item_id": "msg_0"})
    assert types(client.send(user_item("hi", "msg_3")))[0] != "error"


@BOTH
def test_server_items_still_enter_a_full_conversation_and_the_oldest_leaves_memory(dialect: Dialect) -> None:
    client = client_with(dialect, max_items=2, max_conversation_bytes=10_000)
    client.send(user_item("hi", "msg_0"))
    client.send(user_item("hi", "msg_1"))
    held = client.session.conversation.client_bytes
    item_id, effects = client.completed_response("Hello")  # the server's item enters
    assert "error" not in types(effects)
    assert item_id in client.session.conversation and "msg_0" not in client.session.conversation
    assert client.session.conversation.client_bytes < held  # msg_0's bytes were given back
    # A committed user turn, too.
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(200)})
    assert types(client.send({"type": "input_audio_buffer.commit"}))[0] == "input_audio_buffer.committed"
    assert len(client.session.conversation) == 2


@BOTH
def test_the_conversation_byte_budget_and_delete_giving_bytes_back(dialect: Dialect) -> None:
    probe = client_with(dialect)
    probe.send(user_item("x" * 100, "msg_a"))
    one_item = probe.session.conversation.client_bytes
    client = client_with(dialect, max_conversation_bytes=2 * one_item)
    assert types(client.send(user_item("x" * 100, "msg_a")))[0] != "error"
    assert types(client.send(user_item("x" * 100, "msg_b")))[0] != "error"  # exactly at the limit
    assert client.session.conversation.client_bytes == 2 * one_item
    budget_error(
        client, user_item("x" * 100, "msg_c"), "conversation_too_large", "item", "REALTIME_MAX_CONVERSATION_BYTES"
    )
    assert "msg_c" not in client.session.conversation
    client.send({"type": "conversation.item.delete", "item_id": "msg_a"})
    assert client.session.conversation.client_bytes == one_item
    assert types(client.send(user_item("x" * 100, "msg_c")))[0] != "error"


def test_an_item_over_a_budget_is_not_stored() -> None:
    client = client_with(GA, max_items=1)
    stored = client.send(user_item("hi", "msg_0")).records
    assert [type(record) for record in stored] == [ItemStored]
    effects = client.send(user_item("hi", "msg_1"))
    assert types(effects) == ["error"] and effects.records == []


# --- the rate of events --------------------------------------------------------------------------


def test_events_beyond_the_rate_are_not_handled() -> None:
    clock = FakeClock()
    client = client_with(GA, now=clock, max_events_per_second=5)  # bursts of 10
    append = {"type": "input_audio_buffer.append", "audio": audio_ms(80)}
    for _ in range(10):
        assert len(client.send(append).frames) == 1
    effects = client.send({**append, "event_id": "evt_fast"})
    assert types(effects) == ["error"] and effects.frames == []
    error = effects.events[0]["error"]
    assert (error["type"], error["code"], error["event_id"]) == (
        "invalid_request_error",
        "rate_limit_exceeded",
        "evt_fast",
    )
    assert "REALTIME_MAX_EVENTS_PER_SECOND" in error["message"]
    assert types(client.send("not even JSON"))[0] == "error"  # still over: refused, whatever it is
    clock.t += 0.2  # one more token
    assert len(client.send(append).frames) == 1
    assert client.send(append).events[0]["error"]["code"] == "rate_limit_exceeded"
    clock.t += 100  # refilled, but no more than the burst
    results = [client.send(append).events for _ in range(11)]
    assert [bool(events) for events in results] == [False] * 10 + [True]


def test_invalid_events_count_against_the_rate() -> None:
    clock = FakeClock()
    client = client_with(GA, now=clock, max_events_per_second=1)
    assert client.send("garbage").events[0]["error"]["code"] == "invalid_event"
    assert client.send("garbage").events[0]["error"]["code"] == "invalid_event"
    assert client.send({"type": "input_audio_buffer.clear"}).events[0]["error"]["code"] == "rate_limit_exceeded"


def test_token_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=4, now=clock)
    assert [bucket.take() for _ in range(5)] == [True] * 4 + [False]
    clock.t += 0.5
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.t -= 10  # a clock going backwards gives nothing
    assert not bucket.take()
    assert all(TokenBucket(rate=0, capacity=0, now=clock).take() for _ in range(100))  # 0: no limit


# --- stored configurations -----------------------------------------------------------------------


@BOTH
def test_a_config_is_stored_only_when_it_changed(dialect: Dialect) -> None:
    client = client_with(dialect)
    assert client.greeting.records == [ConfigAccepted(session=client.session.config)]
    effects = client.send(session_update(dialect, instructions="Be brief."))
    assert effects.records == [ConfigAccepted(session=client.session.config)]
    again = client.send(session_update(dialect, instructions="Be brief."))
    assert types(again) == ["session.updated"] and again.records == []
    assert client.send(session_update(dialect)).records == []


@BOTH
def test_at_most_max_stored_configs_are_stored(dialect: Dialect) -> None:
    client = client_with(dialect, max_stored_configs=3)
    stored = list(client.greeting.records)
    for index in range(5):
        effects = client.send(session_update(dialect, instructions=f"Version {index}."))
        assert types(effects) == ["session.updated"]
        assert effects.events[0]["session"]["instructions"] == f"Version {index}."
        stored.extend(effects.records)
    assert [record.session["instructions"] for record in stored if isinstance(record, ConfigAccepted)][1:] == [
        "Version 0.",
        "Version 1.",
    ]
    assert len(stored) == 3
    assert client.session.config["instructions"] == "Version 4."  # updates still apply


@pytest.mark.parametrize("max_stored_configs", [0, 1])
def test_a_tiny_config_budget(max_stored_configs: int) -> None:
    client = client_with(GA, max_stored_configs=max_stored_configs)
    assert len(client.greeting.records) == max_stored_configs
    assert client.send(session_update(GA, instructions="New.")).records == []
