"""Persistence that cannot stall a session: the recorder outlives failed writes and a hung database,
values are made storable in one place, item text is stored once, admin pages stay small.

SQLite here (it ignores column lengths); tests/test_postgres.py checks the same values on
PostgreSQL, which refuses what is not cut or cleaned.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import DataError
from prometheus_client import REGISTRY, generate_latest

from transcripts import services
from transcripts.admin import PREVIEW_CHARS, TIMELINE_TEXT_CHARS
from transcripts.models import Conversation, ConversationItem, SessionConfig, Transcription
from transcripts.sanitize import clean_json, clean_text, distinct_key, model_values
from voice import recorder as recorder_module
from voice.protocol import records
from voice.recorder import SessionRecorder

from .conftest import TIMEOUT

CONVERSATION = {
    "session_id": "sess_persist",
    "conversation_id": "conv_persist",
    "dialect": "ga",
    "model_name": "moshi-demo-random-weights",
    "model_type": "sft",
}


def failures(operation: str) -> float:
    return REGISTRY.get_sample_value("realtime_store_failures_total", {"operation": operation}) or 0.0


def item(item_id: str, text: str = "hello", position: int = 1, **fields: Any) -> records.ItemStored:
    return records.ItemStored(
        item_id=item_id,
        item_type="message",
        role="assistant",
        status="completed",
        text=text,
        position=position,
        **fields,
    )


@pytest.fixture
def hang(monkeypatch):
    """Make a services function block the database thread until the test ends (a hung database)."""
    released = threading.Event()
    entered = threading.Event()

    def install(name: str) -> threading.Event:
        def hung(**kwargs: Any) -> Any:
            entered.set()
            released.wait(60)
            raise DataError("the database came back too late")

        monkeypatch.setattr(services, name, hung)
        return entered

    yield install
    released.set()
    time.sleep(0.05)  # let the database thread leave the hung call before the next test uses it


def stored_items(session_id: str = "sess_persist") -> dict[str, str]:
    return dict(ConversationItem.objects.filter(conversation__session_id=session_id).values_list("item_id", "text"))


# --- values made storable ---------------------------------------------------------------------


def test_values_are_cut_to_their_columns_and_cleaned() -> None:
    values = model_values(Conversation, {"requested_model": "m" * 300, "end_reason": "a\x00b", "dialect": "ga"})
    assert values == {"requested_model": "m" * 255, "end_reason": "ab", "dialect": "ga"}
    assert clean_text("a\x00b\ud800c") == "ab\ufffdc"
    assert clean_json({"k\x00": ["v\x00", {"x": "\x00"}, 1, None, float("nan")]}) == {
        "k": ["v", {"x": ""}, 1, None, None]
    }
    assert model_values(ConversationItem, {"role": None, "truncated_at_ms": None}) == {
        "role": "",
        "truncated_at_ms": None,
    }
    assert model_values(ConversationItem, {"audio_ms": -5, "position": 10**12}) == {
        "audio_ms": 0,
        "position": 2147483647,
    }


def test_long_identifiers_stay_distinct_and_stable() -> None:
    one, two = "item_" + "a" * 100, "item_" + "a" * 99 + "b"
    assert len(distinct_key(one, 64)) == 64 and distinct_key(one, 64) != distinct_key(two, 64)
    assert distinct_key(one, 64) == distinct_key(one, 64) and distinct_key("item_1", 64) == "item_1"


@pytest.mark.django_db
def test_over_long_and_nul_values_are_stored_cut_and_cleaned() -> None:
    long_id = "item_" + "x" * 200
    pk = services.conversation_start(**{**CONVERSATION, "requested_model": "gpt-" + "r" * 300, "api_key_id": 12345})
    services.conversation_records_apply(
        conversation_pk=pk,
        batch=[
            records.ConfigAccepted(session={"instructions": "Be\x00 brief.", "k\x00": {"n": "\u0000"}}),
            item(
                long_id,
                text="Bon\x00jour",
                response_id="resp_" + "z" * 100,
                content=[{"type": "output_text", "text": "Bon\x00jour", "x\x00": "\x00"}],
            ),
            records.ItemTruncated(item_id=long_id, audio_end_ms=400, heard_text="Bon\x00"),
            records.TranscriptionOutcome(
                item_id=long_id,
                text="t\x00",
                model="asr-" + "m" * 300,
                language="fr-" + "l" * 40,
                latency_ms=10,
                audio_seconds=1.0,
            ),
        ],
    )
    services.conversation_end(conversation_pk=pk, reason="disconnect:\x00" + "r" * 100)
    conversation = Conversation.objects.get(pk=pk)
    assert len(conversation.requested_model) == 255 and len(conversation.end_reason) == 64
    assert "\x00" not in conversation.end_reason
    assert conversation.api_key_id is None  # a key deleted since the handshake: stored without it
    [stored] = ConversationItem.objects.filter(conversation=conversation)
    assert len(stored.item_id) == 64 and len(stored.response_id) == 64
    assert stored.text == "t" and stored.truncated_at_ms == 400  # the transcription came last
    assert stored.content == [{"type": "output_text", "text": ConversationItem.TEXT_IN_ITEM, "x": ""}]
    transcription = Transcription.objects.get(item=stored)
    assert (len(transcription.model), len(transcription.language), transcription.text) == (128, 16, "t")
    assert SessionConfig.objects.get(conversation=conversation).config == {"instructions": "Be brief.", "k": {"n": ""}}


@pytest.mark.django_db
def test_conversation_start_again_returns_the_same_conversation() -> None:
    assert services.conversation_start(**CONVERSATION) == services.conversation_start(**CONVERSATION)
    assert Conversation.objects.count() == 1


# --- item text stored once --------------------------------------------------------------------


@pytest.mark.django_db
def test_item_text_is_stored_once() -> None:
    pk = services.conversation_start(**CONVERSATION)
    words = "word " * 20_000
    services.conversation_records_apply(
        conversation_pk=pk,
        batch=[
            item("item_audio", text=words, content=[{"type": "output_audio", "transcript": words}]),
            item("item_text", text=words, content=[{"type": "input_text", "text": words}], position=2),
            item("item_heard", text="", content=[{"type": "input_audio", "transcript": None}], position=3),
        ],
    )
    rows = {row.item_id: row for row in ConversationItem.objects.filter(conversation_id=pk)}
    assert rows["item_audio"].text == rows["item_text"].text == words
    assert rows["item_audio"].content == [{"type": "output_audio", "transcript": ConversationItem.TEXT_IN_ITEM}]
    assert rows["item_text"].content == [{"type": "input_text", "text": ConversationItem.TEXT_IN_ITEM}]
    assert rows["item_heard"].content == [{"type": "input_audio", "transcript": None}]  # not transcribed: kept


# --- the recorder -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_recorder_keeps_writing_after_a_failed_batch(monkeypatch) -> None:
    real_apply = services.conversation_records_apply

    def apply(*, conversation_pk: int, batch: list[records.Record]) -> None:
        if any(isinstance(r, records.ItemStored) and r.item_id == "item_poison" for r in batch):
            raise DataError("a value the database refuses")
        real_apply(conversation_pk=conversation_pk, batch=batch)

    monkeypatch.setattr(services, "conversation_records_apply", apply)
    before = (failures("records"), failures("record"))
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add([item("item_1"), item("item_poison", position=2), item("item_3", position=3)])
    await asyncio.sleep(0.2)  # that batch is written (and fails) before the next one comes
    await recorder.add([item("item_4", position=4)])
    await asyncio.wait_for(recorder.close("disconnect:1000"), TIMEOUT)

    assert set(await database_items()) == {"item_1", "item_3", "item_4"}
    assert failures("records") >= before[0] + 1 and failures("record") == before[1] + 1
    assert (await conversation_row()).end_reason == "disconnect:1000"


@pytest.mark.django_db(transaction=True)
async def test_a_conversation_that_could_not_be_created_is_tried_again(monkeypatch) -> None:
    real_start = services.conversation_start
    calls: list[int] = []

    def start(**fields: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise DataError("the first try fails")
        return real_start(**fields)

    monkeypatch.setattr(services, "conversation_start", start)
    before = failures("conversation_start")
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add([item("item_1")])
    await asyncio.wait_for(recorder.close("disconnect:1000"), TIMEOUT)
    assert failures("conversation_start") == before + 1 and len(calls) == 2
    assert recorder.conversation_pk is not None and set(await database_items()) == {"item_1"}


@pytest.mark.django_db(transaction=True)  # the database thread's connection is checked
async def test_a_conversation_that_is_never_created_costs_its_records_not_the_session(monkeypatch) -> None:
    def start(**fields: Any) -> int:
        raise DataError("never")

    monkeypatch.setattr(services, "conversation_start", start)
    monkeypatch.setattr(services, "conversation_end", lambda **fields: pytest.fail("no conversation to end"))
    before = (failures("conversation_start"), failures("record"))
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add([item("item_1"), item("item_2", position=2)])
    await asyncio.sleep(0.2)
    await recorder.add([item("item_3", position=3)])
    await asyncio.wait_for(recorder.close("disconnect:1000"), TIMEOUT)
    assert recorder.conversation_pk is None
    assert failures("record") == before[1] + 3  # each batch's records, counted as lost
    assert failures("conversation_start") >= before[0] + 3  # at start, before each batch, at close


@pytest.mark.django_db(transaction=True)  # the database thread's connection is checked
async def test_add_does_not_block_when_the_writer_is_dead(monkeypatch) -> None:
    monkeypatch.setattr(services, "conversation_start", lambda **fields: 1)
    monkeypatch.setattr(services, "conversation_end", lambda **fields: None)
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    assert recorder._task is not None
    recorder._task.cancel()
    await asyncio.wait([recorder._task])
    before = failures("dropped")
    started = time.monotonic()
    await asyncio.wait_for(recorder.add([item(f"item_{n}", position=n) for n in range(2 * 1000)]), 2)
    assert time.monotonic() - started < 1
    assert failures("dropped") == before + 2000
    await asyncio.wait_for(recorder.close("disconnect:1000"), 2)  # nothing to wait for either


@pytest.mark.django_db(transaction=True)  # the database thread's connection is checked
async def test_add_does_not_block_when_the_queue_is_full(hang, monkeypatch) -> None:
    monkeypatch.setattr(services, "conversation_end", lambda **fields: None)
    entered = hang("conversation_start")  # the writer never gets past creating the conversation
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await asyncio.to_thread(entered.wait, TIMEOUT)
    before = failures("dropped")
    started = time.monotonic()
    await recorder.add([item(f"item_{n}", position=n) for n in range(1500)], wait_s=0.2)
    assert 0.2 <= time.monotonic() - started < 1.5  # waited a little for room, then dropped
    assert failures("dropped") == before + 500
    started = time.monotonic()
    await recorder.add([item("item_late", position=2000)])  # still full: dropped without waiting
    assert time.monotonic() - started < 0.1 and failures("dropped") == before + 501
    await asyncio.wait_for(recorder.close("disconnect:1000", timeout=0.2), 2)


@pytest.mark.django_db(transaction=True)  # the database thread's connection is checked
async def test_close_is_bounded_when_the_database_hangs(hang, monkeypatch) -> None:
    monkeypatch.setattr(services, "conversation_start", lambda **fields: 1)
    monkeypatch.setattr(services, "conversation_end", lambda **fields: pytest.fail("the writes did not finish"))
    entered = hang("conversation_records_apply")
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add([item("item_1")])
    await asyncio.to_thread(entered.wait, TIMEOUT)
    await recorder.add([item("item_2", position=2), item("item_3", position=3)])  # queued behind the hung write
    before = (failures("close_timeout"), failures("dropped"))
    started = time.monotonic()
    await asyncio.wait_for(recorder.close("disconnect:1000", timeout=0.3), 5)
    assert time.monotonic() - started < 1.5
    assert failures("close_timeout") == before[0] + 1 and failures("dropped") == before[1] + 2
    assert recorder._task is not None and recorder._task.done()
    await recorder.add([item("item_4", position=4)])  # after close: dropped, never waits
    assert failures("dropped") == before[1] + 3


@pytest.mark.django_db(transaction=True)  # the database thread's connection is checked
async def test_close_is_bounded_when_ending_the_conversation_hangs(hang, monkeypatch) -> None:
    monkeypatch.setattr(services, "conversation_start", lambda **fields: 1)
    monkeypatch.setattr(services, "conversation_records_apply", lambda **kwargs: None)
    hang("conversation_end")
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add([item("item_1")])
    before = failures("close_timeout")
    await asyncio.wait_for(recorder.close("disconnect:1000", timeout=0.3), 5)
    assert failures("close_timeout") == before + 1


def test_the_failure_counter_is_served_at_metrics() -> None:
    recorder_module.metrics.STORE_FAILURES.labels("records").inc(0)
    assert b'realtime_store_failures_total{operation="records"}' in generate_latest(REGISTRY)


async def database_items() -> dict[str, str]:
    from channels.db import database_sync_to_async

    return await database_sync_to_async(stored_items)()


async def conversation_row() -> Conversation:
    from channels.db import database_sync_to_async

    return await database_sync_to_async(Conversation.objects.get)(session_id=CONVERSATION["session_id"])


# --- admin pages stay small -------------------------------------------------------------------

BIG = 500_000  # characters per item text: a client may send up to 15 MiB in one event
PAGE_LIMIT = 400_000  # bytes: far below one item's text, let alone the 30 items


@pytest.fixture
def big_conversation(db) -> int:
    pk = services.conversation_start(**CONVERSATION)
    text = "All work and no play makes Jack a dull boy. " * (BIG // 44)
    batch: list[records.Record] = [records.ConfigAccepted(session={"instructions": text})]
    for n in range(30):
        batch.append(item(f"item_{n}", text=text, position=n, content=[{"type": "output_audio", "transcript": text}]))
    batch.append(
        records.TranscriptionOutcome(
            item_id="item_0", text=text, model="asr", language="en", latency_ms=5, audio_seconds=1.0
        )
    )
    services.conversation_records_apply(conversation_pk=pk, batch=batch)
    services.conversation_end(conversation_pk=pk, reason="disconnect:1000")
    return pk


@pytest.fixture
def staff_client(db, client):
    user = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "page",
    [
        "/admin/transcripts/conversation/",
        "/admin/transcripts/conversation/?q=Jack",
        "/admin/transcripts/conversation/{pk}/change/",
        "/admin/transcripts/conversationitem/",
        "/admin/transcripts/conversationitem/?conversation__id__exact={pk}",
        "/admin/transcripts/transcription/",
        "/admin/transcripts/sessionconfig/",
        "/admin/transcripts/sessionconfig/?conversation__id__exact={pk}",
    ],
)
def test_admin_pages_of_a_conversation_with_big_items_stay_small(staff_client, big_conversation, page) -> None:
    response = staff_client.get(page.format(pk=big_conversation))
    assert response.status_code == 200
    assert len(response.content) < PAGE_LIMIT, f"{page}: {len(response.content)} bytes"


def test_the_conversation_page_cuts_each_text_with_a_link_to_all_of_it(
    staff_client, big_conversation, django_assert_max_num_queries
) -> None:
    with django_assert_max_num_queries(20):  # not one more query per item to load a whole text
        html = staff_client.get(f"/admin/transcripts/conversation/{big_conversation}/change/").content.decode()
    assert html.count('class="timeline-more"') == 30 + 1 + 1  # 30 items, their transcription, the config
    assert f"{BIG // 44 * 44 - TIMELINE_TEXT_CHARS} more characters" in html
    assert "30 items" in html and "assistant item (completed)" in html
    first = ConversationItem.objects.get(conversation_id=big_conversation, item_id="item_0")
    assert f"/admin/transcripts/conversationitem/{first.pk}/change/" in html


@pytest.mark.parametrize(
    "page",
    ["/admin/transcripts/conversationitem/", "/admin/transcripts/transcription/", "/admin/transcripts/sessionconfig/"],
)
def test_lists_load_only_the_head_of_each_text(staff_client, big_conversation, page, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):  # not one more query per row to load a whole text
        html = staff_client.get(page).content.decode()
    assert "All work and no play makes Jack" in html
    assert html.count("All work and no play") <= 30 * (PREVIEW_CHARS // 44 + 2)  # a preview (and a label) per row


def test_one_item_page_shows_its_whole_text(staff_client, big_conversation) -> None:
    first = ConversationItem.objects.get(conversation_id=big_conversation, item_id="item_0")
    page = staff_client.get(f"/admin/transcripts/conversationitem/{first.pk}/change/")
    assert page.status_code == 200 and page.content.count(b"All work and no play") >= BIG // 44


@pytest.mark.django_db(transaction=True)  # the database thread's connection is checked
async def test_a_cancelled_close_still_ends_the_conversation_in_time(monkeypatch) -> None:
    """daphne cancels a disconnect that takes too long: the writer finishes (or gives up) on its own."""
    ended: list[str] = []
    monkeypatch.setattr(services, "conversation_start", lambda **fields: 1)
    monkeypatch.setattr(services, "conversation_records_apply", lambda **kwargs: time.sleep(0.3))
    monkeypatch.setattr(services, "conversation_end", lambda **kwargs: ended.append(kwargs["reason"]))
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add([item("item_1")])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(recorder.close("disconnect:1001", timeout=5), 0.05)
    assert recorder._task is not None
    await asyncio.wait_for(asyncio.wait([recorder._task]), TIMEOUT)
    assert ended == ["disconnect:1001"]


@pytest.mark.django_db(transaction=True)  # the database thread's connection is checked
async def test_a_cancelled_close_is_still_bounded(hang, monkeypatch) -> None:
    monkeypatch.setattr(services, "conversation_start", lambda **fields: 1)
    hang("conversation_records_apply")
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add([item("item_1")])
    before = failures("close_timeout")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(recorder.close("disconnect:1001", timeout=0.3), 0.05)
    assert recorder._task is not None
    await asyncio.wait_for(asyncio.wait([recorder._task]), 2)  # the close's own timer stopped the writer
    assert failures("close_timeout") == before + 1
