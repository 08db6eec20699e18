"""Stored conversations in the Django admin: listed, filtered, and found by what was said."""

from __future__ import annotations

import asyncio

import pytest
from django.contrib.auth.models import User

from transcripts import services
from voice.protocol import records

from .conftest import TIMEOUT

pytestmark = pytest.mark.django_db


def store_conversation(session_id: str, assistant_text: str) -> int:
    pk = services.conversation_start(
        session_id=session_id,
        conversation_id="conv_" + session_id,
        dialect="ga",
        model_name="moshi-demo-random-weights",
        model_type="sft",
    )
    services.conversation_records_apply(
        conversation_pk=pk,
        batch=[
            records.ConfigAccepted(session={"instructions": "Be brief."}),
            records.ItemStored(
                item_id=f"item_{session_id}",
                item_type="message",
                role="assistant",
                status="completed",
                text=assistant_text,
                position=1,
            ),
        ],
    )
    services.conversation_end(conversation_pk=pk, reason="disconnect:1000")
    return pk


@pytest.fixture
def staff_client(client):
    user = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_search_over_transcript_text_finds_the_conversation(staff_client) -> None:
    store_conversation("sess_weather", "It will be sunny in Paris tomorrow.")
    store_conversation("sess_booking", "A table for two at seven thirty.")
    page = staff_client.get("/admin/transcripts/conversation/", {"q": "Paris"})
    assert page.status_code == 200
    assert b"sess_weather" in page.content and b"sess_booking" not in page.content


def test_conversation_page_shows_its_items_and_configs(staff_client) -> None:
    pk = store_conversation("sess_detail", "Bonjour, the next train leaves at noon.")
    page = staff_client.get(f"/admin/transcripts/conversation/{pk}/change/")
    assert page.status_code == 200
    assert b"the next train leaves at noon" in page.content and b"Be brief." in page.content


def test_items_filter_by_role(staff_client) -> None:
    store_conversation("sess_filter", "Assistant words here.")
    page = staff_client.get("/admin/transcripts/conversationitem/", {"role__exact": "assistant"})
    assert page.status_code == 200 and b"Assistant words here." in page.content
    empty = staff_client.get("/admin/transcripts/conversationitem/", {"role__exact": "user"})
    assert b"Assistant words here." not in empty.content


def test_anonymous_visitors_are_sent_to_the_login_page(client) -> None:
    page = client.get("/admin/transcripts/conversation/")
    assert page.status_code == 302 and "/admin/login/" in page["Location"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("model_manager")
async def test_a_recorded_conversation_plays_in_its_timeline_page(settings, tmp_path, async_client) -> None:
    import io
    import wave

    from asgiref.sync import sync_to_async
    from channels.db import database_sync_to_async

    from transcripts.models import Conversation
    from voice.protocol import Dialect

    from .helpers import append_events, connected, read_pcm16

    settings.MEDIA_ROOT = str(tmp_path)
    settings.VOICE = {**settings.VOICE, "RECORD_AUDIO": True}
    async with connected(Dialect.GA) as client:
        session_id = client.received[0]["session"]["id"]
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
        )
        for event in append_events(read_pcm16("weather_en_24k.wav")[: 48 * 2000]):
            await client.send(event)
        await client.send({"type": "response.create"})  # after the audio: the response answers it
        await client.recv_until("response.done")

    @database_sync_to_async
    def recorded() -> Conversation | None:
        return Conversation.objects.filter(session_id=session_id).exclude(output_audio="").first()

    async with asyncio.timeout(TIMEOUT):
        while (conversation := await recorded()) is None:
            await asyncio.sleep(0.05)

    user = await sync_to_async(User.objects.create_user)("auditor", password="pw", is_staff=True, is_superuser=True)
    await sync_to_async(async_client.force_login)(user)
    page = await async_client.get(f"/admin/transcripts/conversation/{conversation.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Timeline" in html and "session config #1" in html and "assistant item" in html
    assert f"/admin/transcripts/conversation/{conversation.pk}/audio/input/" in html
    for track in ("input", "output"):
        audio = await async_client.get(f"/admin/transcripts/conversation/{conversation.pk}/audio/{track}/")
        assert audio.status_code == 200 and audio["Content-Type"] == "audio/wav"
        body = b"".join(audio.streaming_content)
        with wave.open(io.BytesIO(body)) as wav:
            assert wav.getframerate() == 24000 and wav.getnchannels() == 1
            seconds = wav.getnframes() / 24000
        assert 1.5 <= seconds <= 2.0, f"{track}: the 2 s sent, cut to whole 80 ms frames the model stepped on"


def store_live_conversation(session_id: str) -> int:
    """A Live API session as the runtime hands it to the store: fragments, appends, an ASR outcome."""
    from voice.live.records import Appended, Fragment, LiveClosed, LiveStarted

    resource = {
        "id": session_id,
        "model": "gpt-live-1",
        "status": "active",
        "audio": {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
        "instructions": "Answer about trains.",
    }
    pk = services.conversation_start(
        session_id=session_id,
        conversation_id=session_id,
        dialect="live",
        model_name="moshi-demo-random-weights",
        model_type="sft",
    )
    for batch in (
        [LiveStarted(resource, "sft"), Fragment("assistant", "Hello,", 0, 80), Fragment("assistant", " how", 80, 160)],
        [
            Appended("thinking", "They will ask about trains.", None, 170),
            Fragment("assistant", " can I help?", 160, 240),
        ],
        [
            records.TranscriptionOutcome(
                item_id="seg_1",
                text="When is the next train",
                model="asr",
                language="en",
                latency_ms=90,
                audio_seconds=1.2,
            ),
            *(Fragment("user", word, 1000 + 200 * n, 1200 + 200 * n) for n, word in enumerate(["When", " is", " the"])),
        ],
        [Fragment("user", " next train", 1600, 2000), Fragment("assistant", " At noon.", 2100, 2400)],
        [LiveClosed("expired", 3, 40, resource)],
    ):
        services.conversation_records_apply(conversation_pk=pk, batch=batch)
    services.conversation_end(conversation_pk=pk, reason="disconnect:1000")
    return pk


def test_a_live_conversation_page_shows_its_turns_and_appends_on_the_session_clock(staff_client) -> None:
    pk = store_live_conversation("live_admin")
    page = staff_client.get(f"/admin/transcripts/conversation/{pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "When (since session.start)" in html and "Live API" in html
    order = [
        "+0:00.000",  # the When column comes first in a row
        "session started",
        "assistant turn",
        "Hello, how can I help?",
        "thinking appended",
        "They will ask about trains.",
        "+0:01.000",
        "user turn",
        "When is the next train",
        "transcription completed (asr)",
        "+0:02.100",
        "At noon.",
        "expired (disconnect:1000)",
        "seconds: 3, frames: 40",
    ]
    positions = [html.index(text) for text in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))
    assert "until +0:02.000 (1000 ms)" in html  # the user turn's end and span


def test_live_conversations_are_listed_and_filtered_by_dialect(staff_client) -> None:
    store_live_conversation("live_listed")
    store_conversation("sess_realtime", "A Realtime answer.")
    live = staff_client.get("/admin/transcripts/conversation/", {"dialect__exact": "live"})
    assert live.status_code == 200
    assert b"live_listed" in live.content and b"sess_realtime" not in live.content
    assert b"Live API" in live.content and b"expired" in live.content  # the dialect and the close reason
    found = staff_client.get("/admin/transcripts/conversation/", {"q": "next train"})
    assert b"live_listed" in found.content
    items = staff_client.get("/admin/transcripts/conversationitem/", {"item_type__exact": "thinking"})
    assert b"They will ask about trains." in items.content
