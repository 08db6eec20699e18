"""DATABASE_URL switches the store to PostgreSQL: migrations and the persistence services run there.

Uses the session's PostgreSQL server (conftest's postgres_url: TEST_POSTGRES_URL or a throwaway
one), in a database of its own. PostgreSQL,
unlike SQLite, refuses a string longer than its column and a NUL character in text and jsonb: what
a client sends (its requested model, item ids, texts, session config) is cut and cleaned first.
"""

from __future__ import annotations

from pathlib import Path

from .services import run_on_database

REPO = Path(__file__).resolve().parent.parent

STORE_AND_READ = """
import json
from transcripts import services
from transcripts.models import Conversation
from voice.protocol import records
pk = services.conversation_start(session_id="sess_pg", conversation_id="conv_pg", dialect="ga",
                                 model_name="moshi-demo-random-weights", model_type="sft")
services.conversation_records_apply(conversation_pk=pk, batch=[
    records.ConfigAccepted(session={"instructions": "Be brief."}),
    records.ItemStored(item_id="item_1", item_type="message", role="assistant", status="completed",
                       text=" Bonjour", position=1, response_id="resp_1", audio_ms=800),
    records.ItemTruncated(item_id="item_1", audio_end_ms=400, heard_text=" Bon"),
])
services.conversation_end(conversation_pk=pk, reason="disconnect:1000")
c = Conversation.objects.get(pk=pk)
print(json.dumps({"vendor": __import__("django.db").db.connection.vendor, "ended": c.ended_at is not None,
                  "items": list(c.items.values_list("text", "truncated_at_ms")),
                  "configs": list(c.configs.values_list("config", flat=True))}))
"""


# What a hostile client can put in the store, then a batch with one record the database refuses
# (a position that is not a number: no client value, a stand-in for any record that fails).
HOSTILE_VALUES = r"""
import asyncio, json
from prometheus_client import REGISTRY
from transcripts import services
from transcripts.models import Conversation, ConversationItem, SessionConfig, Transcription
from voice.protocol import records
from voice.recorder import SessionRecorder

long_id = "item_" + "i" * 200
other_id = "item_" + "i" * 199 + "j"
pk = services.conversation_start(session_id="sess_hostile", conversation_id="conv_" + "c" * 100, dialect="ga",
                                 model_name="moshi-demo-random-weights", model_type="sft",
                                 requested_model="gpt-" + "m" * 296, client_address="\x00" + "a" * 100)
services.conversation_records_apply(conversation_pk=pk, batch=[
    records.ConfigAccepted(session={"instructions": "Be\x00 brief.", "metadata\x00": {"k\x00": ["\x00", "\ud800"]},
                                    "temperature": float("nan")}),
    records.ItemStored(item_id=long_id, item_type="message" + "t" * 40, role="assistant", status="completed" + "s" * 20,
                       text="Bon\x00jour", position=1, response_id="resp_" + "r" * 100, audio_ms=800,
                       content=[{"type": "output_audio", "transcript": "Bon\x00jour", "note\x00": "a\x00b"}]),
    records.ItemStored(item_id=other_id, item_type="message", role="user", status="completed",
                       text="another long id", position=2),
    records.ItemTruncated(item_id=long_id, audio_end_ms=400, heard_text="Bon\x00"),
    records.TranscriptionOutcome(item_id=other_id, text="h\x00ello", model="asr-" + "m" * 300,
                                 language="en-" + "l" * 40, latency_ms=10, audio_seconds=1.0),
    records.TranscriptionOutcome(item_id=other_id, text="", model="asr", language=None,
                                 latency_ms=10, audio_seconds=1.0, error="bad\x00 gateway", error_code="c\x00"),
    records.ItemDeleted(item_id=other_id),
])
services.conversation_end(conversation_pk=pk, reason="disconnect:" + "\x00" * 3 + "x" * 100)


async def record_a_bad_batch():
    recorder = SessionRecorder(session_id="sess_batch", conversation_id="conv_batch", dialect="ga",
                               model_name="moshi-demo-random-weights", model_type="sft", requested_model="r" * 300)
    recorder.start()
    await recorder.add([
        records.ItemStored(item_id=f"item_{n}", item_type="message", role="assistant", status="completed",
                           text=f"text {n}\x00", position="not a number" if n == 2 else n)
        for n in range(1, 5)
    ])
    await asyncio.wait_for(recorder.close("disconnect:1000"), 60)
    return recorder.conversation_pk

batch_pk = asyncio.run(record_a_bad_batch())
c = Conversation.objects.get(pk=pk)
print(json.dumps({
    "vendor": __import__("django.db").db.connection.vendor,
    "conversation": [len(c.conversation_id), len(c.requested_model), c.client_address, c.end_reason],
    "items": sorted([len(i.item_id), i.text, len(i.item_type), len(i.status), len(i.response_id), i.truncated_at_ms,
                     i.deleted, i.content] for i in ConversationItem.objects.filter(conversation=c)),
    "transcriptions": sorted([t.status, t.text, len(t.model), t.language, t.error]
                             for t in Transcription.objects.filter(item__conversation=c)),
    "config": SessionConfig.objects.get(conversation=c).config,
    "batch": sorted(ConversationItem.objects.filter(conversation_id=batch_pk).values_list("item_id", "text")),
    "batch_requested_model": len(Conversation.objects.get(pk=batch_pk).requested_model),
    "batch_ended": Conversation.objects.get(pk=batch_pk).end_reason,
    "lost": REGISTRY.get_sample_value("realtime_store_failures_total", {"operation": "record"}),
}))
"""


def test_conversations_are_stored_in_postgresql(database_url: str) -> None:
    stored = run_on_database(database_url, STORE_AND_READ, REPO)
    assert stored == {
        "vendor": "postgresql",
        "ended": True,
        "items": [[" Bon", 400]],
        "configs": [{"instructions": "Be brief."}],
    }


def test_what_postgresql_refuses_is_cut_and_cleaned_first(database_url: str) -> None:
    stored = run_on_database(database_url, HOSTILE_VALUES, REPO)
    marker = "(in item text)"  # ConversationItem.TEXT_IN_ITEM
    assert stored["vendor"] == "postgresql"
    assert stored["conversation"] == [64, 255, "a" * 64, "disconnect:" + "x" * 53]
    assert stored["items"] == sorted(
        [
            [64, "Bon", 32, 16, 64, 400, False, [{"type": "output_audio", "transcript": marker, "note": "ab"}]],
            [64, "hello", 7, 9, 0, None, True, []],  # the same 64-character head as the other: a distinct id
        ]
    )
    assert stored["transcriptions"] == sorted(
        [["completed", "hello", 128, "en-" + "l" * 13, ""], ["failed", "", 3, "", "c: bad gateway"]]
    )
    assert stored["config"] == {"instructions": "Be brief.", "metadata": {"k": ["", "\ufffd"]}, "temperature": None}
    # One record of the batch failed; the batch was retried record by record and the others kept.
    assert stored["batch"] == [["item_1", "text 1"], ["item_3", "text 3"], ["item_4", "text 4"]]
    assert stored["batch_requested_model"] == 255
    assert stored["batch_ended"] == "disconnect:1000" and stored["lost"] == 1.0
