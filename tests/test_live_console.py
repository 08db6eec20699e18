"""The staff console's view of a Live API session: the publisher fed Live server events.

Unit level: events_sent as the runtime calls it, then summary() and the detail message a following
console gets. The events are built by voice.live's own LiveEvents, as the session sends them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from voice.console import groups
from voice.console import publisher as publisher_module
from voice.console.publisher import ENTRY_CHARS, TRANSCRIPT_ENTRIES, SessionFacts, SessionPublisher
from voice.live.events import LiveEvents

EVENTS = LiveEvents()
RESOURCE = {"id": "live_console", "model": "gpt-live-1", "status": "active"}


class Layer:
    """A channel layer that keeps what was sent, with when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str, dict[str, Any]]] = []

    async def group_add(self, group: str, channel: str) -> None:
        pass

    async def group_discard(self, group: str, channel: str) -> None:
        pass

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.sent.append((time.monotonic(), group, message))

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        self.sent.append((time.monotonic(), channel, message))


def live_publisher(layer: Any = None) -> SessionPublisher:
    facts = SessionFacts("live_console", "127.0.0.1:1", "key one", "sft", "demo", "live", 0)
    return SessionPublisher(layer or Layer(), facts)


def said(speaker: str, text: str, start_ms: int) -> dict[str, Any]:
    return EVENTS.transcript_delta(speaker, text, start_ms, start_ms + 80)


def transcript(publisher: SessionPublisher) -> list[dict[str, Any]]:
    return publisher._detail_message()["transcript"]


def test_fragments_are_joined_into_turns_as_the_store_joins_them() -> None:
    publisher = live_publisher()
    publisher.events_sent([EVENTS.session_started(RESOURCE, None)], responding=False)
    publisher.events_sent(
        [EVENTS.audio_delta("AAAA"), said("assistant", "Hello", 0), EVENTS.audio_delta("AAAA")], responding=True
    )
    publisher.events_sent([said("assistant", " there.", 80)], responding=True)
    publisher.events_sent([said("user", "Hi", 400), said("user", " you", 480)], responding=False)
    publisher.events_sent([said("assistant", " Yes?", 800)], responding=True)
    assert [
        (e["id"], e["role"], e["text"], e["status"], e["start_ms"], e["end_ms"]) for e in transcript(publisher)
    ] == [
        ("turn_1", "assistant", "Hello there.", "completed", 0, 160),
        ("turn_2", "user", "Hi you", "completed", 400, 560),
        ("turn_3", "assistant", " Yes?", "in_progress", 800, 880),
    ]
    summary = publisher._detail_message()["session"]
    assert summary["dialect"] == "live" and summary["state"] == "speaking" and summary["session_id"] == "live_console"


def test_the_state_is_speaking_while_the_model_speaks_or_its_text_comes(monkeypatch) -> None:
    publisher = live_publisher()
    assert publisher.summary()["state"] == "listening"
    publisher.events_sent([EVENTS.audio_delta("AAAA")], responding=True)  # the silence gate is open
    assert publisher.summary()["state"] == "speaking"
    publisher.events_sent([EVENTS.audio_delta("AAAA")], responding=False)
    assert publisher.summary()["state"] == "listening"
    # A runtime that cannot tell: the output transcript says the model speaks, for SPEAKING_HOLD_S.
    publisher.events_sent([said("assistant", "Hm", 0)], responding=False)
    assert publisher.summary()["state"] == "speaking"
    later = time.monotonic() + publisher_module.SPEAKING_HOLD_S + 0.1
    monkeypatch.setattr(publisher_module.time, "monotonic", lambda: later)
    assert publisher.summary()["state"] == "listening"


def test_session_closed_completes_the_open_turn_and_the_state() -> None:
    publisher = live_publisher()
    publisher.events_sent([said("user", "Bye", 0)], responding=False)
    closed = EVENTS.session_closed("expired", RESOURCE, 240, None)
    publisher.events_sent([said("assistant", " Bye.", 100), closed], responding=False)
    assert [(e["role"], e["status"]) for e in transcript(publisher)] == [
        ("user", "completed"),
        ("assistant", "completed"),
    ]
    assert publisher.summary()["state"] == "closed" and publisher.close_reason == "expired"


def test_what_a_console_is_sent_stays_bounded() -> None:
    publisher = live_publisher()
    for n in range(TRANSCRIPT_ENTRIES * 3):
        publisher.events_sent([said("assistant" if n % 2 else "user", "word " * 50, n * 1000)], responding=False)
    publisher.events_sent([said("user", "x" * (ENTRY_CHARS * 5), 10**6)], responding=False)
    entries = transcript(publisher)
    assert len(entries) == TRANSCRIPT_ENTRIES
    assert entries[-1]["id"] == f"turn_{TRANSCRIPT_ENTRIES * 3 + 1}" and len(entries[-1]["text"]) == ENTRY_CHARS
    assert all(len(entry["text"]) <= ENTRY_CHARS for entry in entries)


def test_a_realtime_session_keeps_its_states() -> None:
    facts = SessionFacts("sess_rt", "127.0.0.1:1", None, "sft", "demo", "ga", 0)
    publisher = SessionPublisher(Layer(), facts)
    publisher.events_sent([{"type": "response.created", "response": {"id": "resp_1"}}], responding=True)
    assert publisher.summary()["state"] == "responding" and publisher.summary()["dialect"] == "ga"
    publisher.events_sent([{"type": "response.done", "response": {"id": "resp_1"}}], responding=False)
    assert publisher.summary()["state"] == "listening"


async def test_a_live_state_change_and_a_new_model_type_are_published_at_once() -> None:
    layer = Layer()
    publisher = live_publisher(layer)
    await publisher.start("channel.live")
    try:
        await asyncio.sleep(publisher_module.PUBLISH_INTERVAL_S / 2)  # the announcement went; the next waits
        changed = time.monotonic()
        publisher.events_sent([EVENTS.audio_delta("AAAA"), said("assistant", "Hi", 0)], responding=True)
        await asyncio.sleep(0.05)
        summaries = [(at, m) for at, group, m in layer.sent if group == groups.CONSOLES and at >= changed]
        assert summaries and summaries[0][0] - changed < 0.05
        assert summaries[0][1]["session"]["state"] == "speaking"
        details = [m for _, group, m in layer.sent if group == groups.watchers_group("live_console")]
        assert details[-1]["transcript"][-1]["text"] == "Hi"

        await asyncio.sleep(publisher_module.PUBLISH_INTERVAL_S / 2)
        changed = time.monotonic()
        publisher.update_facts(model_type="base", slot=2)
        await asyncio.sleep(0.05)
        last = [m for at, group, m in layer.sent if group == groups.CONSOLES and at >= changed]
        assert last and (last[0]["session"]["model_type"], last[0]["session"]["slot"]) == ("base", 2)
    finally:
        await publisher.close("test over")


@pytest.mark.parametrize("delta", ["", "\u00e9t\u00e9"])
def test_odd_fragments_are_kept_as_sent(delta: str) -> None:
    publisher = live_publisher()
    publisher.events_sent([said("assistant", "a", 0), said("assistant", delta, 80)], responding=False)
    assert transcript(publisher)[0]["text"] == "a" + delta
