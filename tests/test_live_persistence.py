"""A Live API session kept like every session: its fragments joined into turns, its appends, its
session, usage and close reason, through the same sanitizing and the same record-by-record retry.

SQLite here; the last test stores a hostile Live session in PostgreSQL, which refuses what is not
cut or cleaned (tests/test_postgres.py does the same for the Realtime records).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from prometheus_client import REGISTRY

from transcripts import services
from transcripts.models import Conversation, ConversationItem, SessionConfig, Transcription
from voice.live.records import Appended, Fragment, LiveClosed, LiveStarted
from voice.protocol.records import TranscriptionOutcome
from voice.recorder import SessionRecorder

from .conftest import TIMEOUT
from .services import run_on_database

REPO = Path(__file__).resolve().parent.parent

LIVE = {
    "session_id": "live_persist",
    "conversation_id": "live_persist",
    "dialect": "live",
    "model_name": "moshi-demo-random-weights",
    "model_type": "sft",
}
RESOURCE = {
    "id": "live_persist",
    "expires_at": 1_900_000_000,
    "model": "gpt-live-1",
    "status": "active",
    "audio": {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
    "delegation": {"type": "client"},
    "instructions": "Be brief.",
    "store": False,
}


def outcome(segment_id: str, text: str, **fields: Any) -> TranscriptionOutcome:
    values: dict[str, Any] = {"model": "asr", "language": "en", "latency_ms": 120, "audio_seconds": 0.9}
    return TranscriptionOutcome(item_id=segment_id, text=text, **{**values, **fields})


def turns(pk: int) -> list[tuple[Any, ...]]:
    items = ConversationItem.objects.filter(conversation_id=pk, item_type="message").order_by("position")
    return list(items.values_list("item_id", "role", "text", "start_ms", "end_ms", "audio_ms", "status"))


def store(pk: int, *batches: list[Any]) -> None:
    for batch in batches:
        services.conversation_records_apply(conversation_pk=pk, batch=batch)


def failures(operation: str) -> float:
    return REGISTRY.get_sample_value("realtime_store_failures_total", {"operation": operation}) or 0.0


# --- turns --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_fragments_over_several_batches_are_joined_into_turns() -> None:
    pk = services.conversation_start(**LIVE)
    store(
        pk,
        [LiveStarted(RESOURCE, "sft"), Fragment("assistant", "Hello", 0, 80), Fragment("assistant", " there", 80, 160)],
        [Fragment("assistant", ",", 160, 240)],  # the same turn, in the next batch
        [
            Fragment("user", "Hi", 400, 700),
            Fragment("user", " again", 700, 1000),
            Fragment("assistant", " Yes", 1040, 1120),
        ],
        [Fragment("assistant", " indeed.", 1120, 1200), Fragment("user", " Bye", 1300, 1600)],
    )
    assert turns(pk) == [
        ("turn_1", "assistant", "Hello there,", 0, 240, 240, "completed"),
        ("turn_2", "user", "Hi again", 400, 1000, 600, "completed"),
        ("turn_3", "assistant", " Yes indeed.", 1040, 1200, 160, "completed"),
        ("turn_4", "user", " Bye", 1300, 1600, 300, "in_progress"),  # open until someone else speaks
    ]
    store(pk, [LiveClosed("close_requested", 1, 21, RESOURCE)])
    assert turns(pk)[-1][-1] == "completed"
    positions = list(ConversationItem.objects.filter(conversation_id=pk).values_list("position", flat=True))
    assert sorted(positions) == [1, 2, 3, 4]


@pytest.mark.django_db
def test_one_fragment_per_batch_still_makes_one_turn() -> None:
    pk = services.conversation_start(**LIVE)
    words = ["One", " two", " three", " four"]
    store(pk, *([Fragment("assistant", word, 80 * n, 80 * n + 80)] for n, word in enumerate(words)))
    assert turns(pk) == [("turn_1", "assistant", "One two three four", 0, 320, 320, "in_progress")]


@pytest.mark.django_db
def test_appends_are_items_of_their_own_and_do_not_end_the_turn() -> None:
    pk = services.conversation_start(**LIVE)
    store(
        pk,
        [
            LiveStarted(RESOURCE, "sft"),
            Fragment("assistant", "Let me", 0, 80),
            Appended("instructions", "Speak French from now on.", None, 90),
            Fragment("assistant", " see.", 80, 160),
        ],
        [Appended("thinking", "The user wants a train.", None, 200), Appended("commentary", "Checking.", None, 210)],
    )
    assert turns(pk) == [("turn_1", "assistant", "Let me see.", 0, 160, 160, "in_progress")]
    appends = ConversationItem.objects.filter(conversation_id=pk, item_id__startswith="append_").order_by("position")
    assert list(appends.values_list("item_id", "item_type", "role", "text", "start_ms", "end_ms", "content")) == [
        ("append_1", "instructions", "system", "Speak French from now on.", 90, 90, []),
        ("append_2", "thinking", "", "The user wants a train.", 200, 200, []),
        ("append_3", "commentary", "", "Checking.", 210, 210, []),
    ]


# --- the session, its usage and why it closed ---------------------------------------------------


@pytest.mark.django_db
def test_the_session_usage_and_close_reason_are_stored() -> None:
    pk = services.conversation_start(**{**LIVE, "dialect": "ga", "model_type": "base"})  # LiveStarted corrects both
    store(pk, [LiveStarted(RESOURCE, "sft")])
    conversation = Conversation.objects.get(pk=pk)
    assert (conversation.dialect, conversation.model_type, conversation.requested_model) == (
        "live",
        "sft",
        "gpt-live-1",
    )
    assert list(SessionConfig.objects.filter(conversation_id=pk).values_list("sequence", "config")) == [(1, RESOURCE)]

    store(pk, [LiveClosed("expired", 240, 3000, RESOURCE)])  # the same resource: not stored again
    services.conversation_end(conversation_pk=pk, reason="disconnect:1000")
    conversation.refresh_from_db()
    assert conversation.close_reason == "expired" and conversation.usage == {"seconds": 240, "frames": 3000}
    assert conversation.end_reason == "disconnect:1000" and conversation.ended_at is not None
    assert SessionConfig.objects.filter(conversation_id=pk).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["close_requested", "connection_lost"])
def test_a_final_resource_changed_by_an_update_is_stored_at_the_close(reason: str) -> None:
    pk = services.conversation_start(**LIVE)
    updated = {
        **RESOURCE,
        "delegation": {"type": "client"},
        "audio": {**RESOURCE["audio"], "output": {"voice": "cedar"}},
    }
    store(pk, [LiveStarted(RESOURCE, "sft")], [LiveClosed(reason, 3, 40, updated)])
    configs = list(SessionConfig.objects.filter(conversation_id=pk).values_list("sequence", "config"))
    assert configs == [(1, RESOURCE), (2, updated)]
    assert Conversation.objects.get(pk=pk).close_reason == reason


# --- transcriptions of user segments ------------------------------------------------------------


@pytest.mark.django_db
def test_a_transcription_is_stored_on_the_user_turn_its_fragments_went_into() -> None:
    pk = services.conversation_start(**LIVE)
    store(
        pk,
        [LiveStarted(RESOURCE, "sft"), Fragment("assistant", "Hello", 0, 80)],
        [
            outcome("seg_one", "What time is it"),
            Fragment("user", "What", 400, 500),
            Fragment("user", " time", 500, 600),
        ],
        [Fragment("user", " is", 600, 700), Fragment("user", " it", 700, 800)],
        [outcome("seg_two", "please"), Fragment("user", " please", 900, 1000)],  # the same turn goes on
        [outcome("seg_three", "and tomorrow")],  # its fragments come in the next batch, after an assistant turn
        [Fragment("assistant", " Noon.", 1000, 1080), Fragment("user", " and", 1100, 1200)],
        [Fragment("user", " tomorrow", 1200, 1300)],
    )
    assert [turn[1:3] for turn in turns(pk)] == [
        ("assistant", "Hello"),
        ("user", "What time is it please"),
        ("assistant", " Noon."),
        ("user", " and tomorrow"),
    ]
    on = dict(Transcription.objects.filter(item__conversation_id=pk).values_list("text", "item__item_id"))
    assert on == {"What time is it": "turn_2", "please": "turn_2", "and tomorrow": "turn_4"}
    assert not ConversationItem.objects.filter(conversation_id=pk, item_type=ConversationItem.LIVE_SEGMENT).exists()


@pytest.mark.django_db
def test_transcriptions_without_fragments_stay_on_their_segment() -> None:
    pk = services.conversation_start(**LIVE)
    store(
        pk,
        [LiveStarted(RESOURCE, "sft"), Fragment("assistant", "Hello", 0, 80)],
        [outcome("seg_failed", "", error="upstream timed out", error_code="asr_timeout")],
        [outcome("seg_blank", "  ")],
        # Two segments transcribed at once: the first's fragments could be told from the second's no more.
        [outcome("seg_first", "one"), outcome("seg_second", "two")],
        [Fragment("user", " two", 900, 1000), Fragment("user", " one", 1000, 1100)],
        [outcome("seg_late", "never heard")],  # no fragment came before the close
    )
    store(pk, [LiveClosed("close_requested", 1, 15, RESOURCE)])
    segments = ConversationItem.objects.filter(conversation_id=pk, item_type=ConversationItem.LIVE_SEGMENT)
    assert sorted(segments.values_list("item_id", "role", "status", "text", "audio_ms", "start_ms")) == [
        ("seg_blank", "user", "completed", "", 900, 80),
        ("seg_failed", "user", "failed", "", 900, 80),
        ("seg_first", "user", "completed", "", 900, 80),
        ("seg_late", "user", "completed", "", 900, 1100),
    ]
    on = dict(Transcription.objects.filter(item__conversation_id=pk).values_list("item__item_id", "status"))
    assert on == {
        "seg_failed": "failed",
        "seg_blank": "completed",
        "seg_first": "completed",
        "turn_2": "completed",
        "seg_late": "completed",
    }
    assert Transcription.objects.get(item__item_id="seg_failed").error == "asr_timeout: upstream timed out"
    assert Transcription.objects.get(item__item_id="turn_2").text == "two"


@pytest.mark.django_db
def test_a_transcription_after_the_close_waits_for_nothing() -> None:
    pk = services.conversation_start(**LIVE)
    store(pk, [LiveStarted(RESOURCE, "sft"), LiveClosed("connection_lost", 0, 2, RESOURCE)], [outcome("seg_x", "hi")])
    assert ConversationItem.objects.get(conversation_id=pk, item_id="seg_x").status == "completed"


@pytest.mark.django_db
def test_a_realtime_conversation_keeps_its_own_transcriptions() -> None:
    pk = services.conversation_start(**{**LIVE, "session_id": "sess_rt", "dialect": "ga"})
    store(pk, [outcome("item_user", "hello")])
    item = ConversationItem.objects.get(conversation_id=pk)
    assert (item.item_id, item.item_type, item.text) == ("item_user", "message", "hello")


# --- sanitizing and failures --------------------------------------------------------------------


@pytest.mark.django_db
def test_what_a_client_sends_is_cut_and_cleaned() -> None:
    pk = services.conversation_start(**LIVE)
    long_id = "seg_" + "s" * 200
    store(
        pk,
        [
            LiveStarted({**RESOURCE, "instructions": "Be\x00 brief.", "k\x00": [float("nan")]}, "sft" + "x" * 40),
            Fragment("assistant", "Bon\x00jour", 0, 80),
            Fragment("assistant", " \ud800!", 80, 2**40),
            Appended("thinking", "t\x00" * 10_000, "d\x00", -5),
            outcome(long_id, "oui\x00", model="asr-" + "m" * 300),
            Fragment("user", "oui", 3000, 3080),
        ],
        [LiveClosed("expired" + "r" * 100, 2**40, 2**40, {"id\x00": "x"})],
    )
    conversation = Conversation.objects.get(pk=pk)
    assert conversation.model_type == "sft" + "x" * 13 and len(conversation.close_reason) == 32
    assert conversation.usage == {"seconds": 2**40, "frames": 2**40}  # JSON: no column range
    top = 2147483647
    assert turns(pk)[0][2:6] == ("Bonjour \ufffd!", 0, top, top)
    append = ConversationItem.objects.get(conversation_id=pk, item_type="thinking")
    assert append.text == "t" * 10_000 and append.start_ms == 0
    assert append.content == [{"type": "delegation", "delegation_id": "d"}]
    transcription = Transcription.objects.get(item__conversation_id=pk)
    assert (transcription.text, len(transcription.model), transcription.item.item_id) == ("oui", 128, "turn_2")
    configs = list(SessionConfig.objects.filter(conversation_id=pk).values_list("config", flat=True))
    assert configs == [{**RESOURCE, "instructions": "Be brief.", "k": [None]}, {"id": "x"}]


@pytest.mark.django_db(transaction=True)  # the recorder writes from the database thread
async def test_one_bad_record_loses_only_itself() -> None:
    before = failures("record")
    recorder = SessionRecorder(**{**LIVE, "session_id": "live_bad"})
    recorder.start()
    await recorder.add(
        [
            LiveStarted(RESOURCE, "sft"),
            Fragment("assistant", "Hello", 0, 80),
            Fragment("assistant", None, 80, 160),  # type: ignore[arg-type]  # a record that cannot be stored
            Fragment("assistant", " world", 160, 240),
            Appended("commentary", "Noted.", None, 250),
            Fragment("user", "Hi", 300, 400),
            LiveClosed("close_requested", 0, 5, RESOURCE),
        ]
    )
    await asyncio.wait_for(recorder.close("disconnect:1000"), TIMEOUT)

    @database_sync_to_async
    def stored() -> tuple[list[tuple[Any, ...]], Conversation, int]:
        pk = recorder.conversation_pk
        assert pk is not None
        appends = ConversationItem.objects.filter(conversation_id=pk, item_type="commentary").count()
        return turns(pk), Conversation.objects.get(pk=pk), appends

    rows, conversation, appends = await stored()
    assert [row[1:3] for row in rows] == [("assistant", "Hello world"), ("user", "Hi")]
    assert appends == 1 and conversation.close_reason == "close_requested"
    assert conversation.end_reason == "disconnect:1000" and failures("record") == before + 1


# --- PostgreSQL ---------------------------------------------------------------------------------

HOSTILE_LIVE = r"""
import json
from transcripts import services
from transcripts.models import Conversation, ConversationItem, SessionConfig, Transcription
from voice.live.records import Appended, Fragment, LiveClosed, LiveStarted
from voice.protocol.records import TranscriptionOutcome

resource = {"id": "live_pg", "model": "gpt-live-" + "1" * 300, "instructions": "Be\x00 brief.", "k\x00": "\ud800"}
pk = services.conversation_start(session_id="live_pg", conversation_id="live_pg", dialect="live",
                                 model_name="moshi-demo-random-weights", model_type="sft")
batches = [
    [LiveStarted(resource, "sft" + "\x00" * 3 + "t" * 40), Fragment("assistant", "Bon\x00", 0, 80)],
    [Fragment("assistant", "jour " * 100_000, 80, 2**40), Appended("instructions", "Sois\x00 bref.", None, 90)],
    [TranscriptionOutcome(item_id="seg_" + "s" * 200, text="sa\x00lut", model="asr-" + "m" * 300,
                          language="fr-" + "l" * 40, latency_ms=10, audio_seconds=1.0),
     Fragment("user", "sa\x00lut", 3000, 3080)],
    [LiveClosed("connection_lost\x00" + "r" * 100, 3, 38, {**resource, "k\x00": "other"})],
]
for batch in batches:
    services.conversation_records_apply(conversation_pk=pk, batch=batch)
services.conversation_end(conversation_pk=pk, reason="disconnect:1006")
c = Conversation.objects.get(pk=pk)
print(json.dumps({
    "vendor": __import__("django.db").db.connection.vendor,
    "conversation": [c.dialect, c.model_type, len(c.requested_model), c.close_reason, c.usage, c.end_reason],
    "items": [[i.item_id, i.role, i.item_type, len(i.text), i.text[:12], i.start_ms, i.end_ms]
              for i in ConversationItem.objects.filter(conversation=c).order_by("position")],
    "transcriptions": [[t.item.item_id, t.text, len(t.model), t.language]
                       for t in Transcription.objects.filter(item__conversation=c)],
    "configs": list(SessionConfig.objects.filter(conversation=c).values_list("sequence", flat=True)),
    "instructions": SessionConfig.objects.get(conversation=c, sequence=1).config["instructions"],
}))
"""


def test_a_hostile_live_session_is_stored_in_postgresql(database_url: str) -> None:
    stored = run_on_database(database_url, HOSTILE_LIVE, REPO)
    top = 2147483647
    assert stored["vendor"] == "postgresql"
    assert stored["conversation"] == [
        "live",
        "sft" + "t" * 13,
        255,
        "connection_lost" + "r" * 17,
        {"seconds": 3, "frames": 38},
        "disconnect:1006",
    ]
    assert stored["items"] == [
        ["turn_1", "assistant", "message", 3 + 500_000, "Bonjour jour", 0, top],
        ["append_1", "system", "instructions", 10, "Sois bref.", 90, 90],
        ["turn_2", "user", "message", 5, "salut", 3000, 3080],
    ]
    assert stored["transcriptions"] == [["turn_2", "salut", 128, "fr-" + "l" * 13]]
    assert stored["configs"] == [1, 2] and stored["instructions"] == "Be brief."
