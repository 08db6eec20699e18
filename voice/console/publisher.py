"""SessionPublisher: what the staff consoles see of one session, sent at a bounded rate.

The consumer tells it what happened (server events sent, client frames, model frames) through
methods that only store references and set a flag; nothing is computed or sent on the audio path.
A task of its own sends the session's summary to every console at most every PUBLISH_INTERVAL_S,
at once when the session starts or its state changes (listening / responding), and at least every
HEARTBEAT_S, so that a console can drop the sessions of a process that died without saying so.
The channel layer never carries per-frame deltas: channels-redis holds 100 messages per channel and
`group_send` silently skips a console over capacity, so a burst would lose updates, not just be late.

Realtime sessions (dialects ga, beta) show one transcript entry per response and per user item,
and the state ``responding`` / ``listening``. Live API sessions (dialect live) show their transcript
fragments joined into turns as the store joins them (consecutive fragments of one speaker make one
entry, ``turn_<n>``, open until the other speaker starts), and the state ``speaking`` (the model's
output is not silence, or an output transcript fragment came within SPEAKING_HOLD_S),
``listening``, or ``closed`` once ``session.closed`` was sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..protocol.audio import rms
from . import groups

log = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 0.25
HEARTBEAT_S = 5.0
TRANSCRIPT_ENTRIES = 20  # turns kept for a console that starts following; the database keeps all
ENTRY_CHARS = 1000  # the tail of a long turn is what a live view needs

_ASSISTANT_DELTAS = {
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
}

_LIVE_DELTAS = {"session.output_transcript.delta": "assistant", "session.input_transcript.delta": "user"}
LIVE = "live"  # the dialect of Live API sessions
SPEAKING_HOLD_S = 1.0  # a Live session is speaking this long after an output transcript fragment

# One label per process, so a console shows which worker holds a session.
SERVER_NAME = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class SessionFacts:
    """What does not change during a session: shown in the console's list."""

    session_id: str
    client_address: str
    api_key: str | None  # the key's name; None on an open endpoint
    model_type: str
    model_name: str
    dialect: str
    slot: int | None
    server: str = SERVER_NAME


class SessionPublisher:
    """Collects one session's live state and publishes it to the consoles, throttled."""

    def __init__(self, channel_layer: Any, facts: SessionFacts, interval_s: float = PUBLISH_INTERVAL_S) -> None:
        self.layer = channel_layer
        self.facts = facts
        self.interval_s = interval_s
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.responding = False
        self.transcript: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.live = facts.dialect == LIVE  # a Live API session (also once it sends a Live event)
        self.close_reason: str | None = None  # a Live session's session.closed reason
        self._live_turns = 0  # Live transcript entries so far (turn_<n>)
        self._live_turn: tuple[str, str] | None = None  # the open Live entry: its key and role
        self._output_text_at = -SPEAKING_HOLD_S  # when a Live output transcript fragment last came
        self._input_frame: np.ndarray | None = None
        self._output_frame: np.ndarray | None = None
        self._latency_s: float | None = None
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel_name: str | None = None
        self._failing = False

    # --- lifecycle (not on the audio path) ----------------------------------------------------

    async def start(self, channel_name: str) -> None:
        """Join the groups consoles reach sessions through, then announce the session at once."""
        self._channel_name = channel_name
        await self.layer.group_add(groups.LIVE_SESSIONS, channel_name)
        await self.layer.group_add(groups.session_group(self.facts.session_id), channel_name)
        self._urgent.set()
        self._wake.set()
        self._task = asyncio.create_task(self._publish_forever(), name="console-publisher")

    async def close(self, reason: str) -> None:
        """Stop publishing, leave the groups and tell every console the session is gone."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            if self._channel_name is not None:
                await self.layer.group_discard(groups.LIVE_SESSIONS, self._channel_name)
                await self.layer.group_discard(groups.session_group(self.facts.session_id), self._channel_name)
            await self.layer.group_send(
                groups.CONSOLES,
                {"type": groups.SESSION_GONE, "session_id": self.facts.session_id, "reason": reason},
            )
        except Exception:  # noqa: BLE001 - the session ends whatever the channel layer does
            log.warning("could not tell the consoles that session %s ended", self.facts.session_id, exc_info=True)

    async def reply(self, reply_to: str, *, detail: bool = False) -> None:
        """Answer one console directly: a roll call gets the summary, a new follower the detail too."""
        message = self._detail_message() if detail else self._summary_message()
        try:
            await self.layer.send(reply_to, message)
        except Exception:  # noqa: BLE001 - a console that left or a full channel costs it one update
            log.debug("reply to console %s failed", reply_to, exc_info=True)

    # --- what happened (cheap: store and flag) ------------------------------------------------

    def update_facts(self, **changes: Any) -> None:
        """What was fixed at connect changed (a Live session's session.start selected another model
        type, and with it another slot): published at once."""
        self.facts = replace(self.facts, **changes)
        self._urgent.set()
        self._wake.set()

    def events_sent(self, events: Iterable[dict[str, Any]], *, responding: bool) -> None:
        """Server events the client was sent: transcript text, turns and the response state.

        ``responding``: a Realtime response is under way, or a Live session's model is speaking.
        """
        before = self._state()
        for event in events:
            kind = event["type"]
            if kind in _LIVE_DELTAS:
                self._live_fragment(_LIVE_DELTAS[kind], event)
            elif kind == "session.closed":
                self.live = True
                self.close_reason = str(event.get("reason") or "closed")
                self._live_close()
            elif kind in _ASSISTANT_DELTAS:
                entry = self._entry(event.get("response_id") or "", "assistant", "in_progress")
                entry["text"] = (entry["text"] + event.get("delta", ""))[-ENTRY_CHARS:]
            elif kind == "response.created":
                self._entry(event["response"]["id"], "assistant", "in_progress")
            elif kind == "response.done":
                response = event["response"]
                self._entry(response["id"], "assistant", "in_progress")["status"] = response.get("status", "completed")
            elif kind == "input_audio_buffer.committed":
                self._entry(event["item_id"], "user", "audio")
            elif kind == "conversation.item.input_audio_transcription.completed":
                entry = self._entry(event["item_id"], "user", "audio")
                entry["text"], entry["status"] = event.get("transcript", "")[-ENTRY_CHARS:], "completed"
            elif kind == "conversation.item.input_audio_transcription.failed":
                self._entry(event["item_id"], "user", "audio")["status"] = "failed"
            else:
                continue
            self._wake.set()
        self.responding = responding
        if self._state() != before:
            self._urgent.set()
            self._wake.set()

    def client_audio(self, frames: list[np.ndarray]) -> None:
        """Frames of the client's audio; the level is measured on the last one, at publish time."""
        if frames:
            self._input_frame = frames[-1]
            self._wake.set()

    def model_frame(self, pcm: np.ndarray | None, latency_s: float | None) -> None:
        """One model output frame: what the client hears (None outside a response) and its latency."""
        self._output_frame = pcm
        if latency_s is not None:
            self._latency_s = latency_s
        self._wake.set()

    # --- publishing ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The session as a console lists it: plain JSON-able values (msgpack on channels-redis)."""
        started = datetime.fromtimestamp(self.started_wall, tz=UTC)
        return {
            **asdict(self.facts),
            "started_at": started.isoformat(timespec="seconds"),
            # A duration, not a clock: the browser counts on from it, whatever its own clock says.
            "duration_s": round(time.monotonic() - self.started_mono, 1),
            "dialect": LIVE if self.live else self.facts.dialect,
            "state": self._state(),
            "input_level": round(rms(self._input_frame), 4) if self._input_frame is not None else 0.0,
            "output_level": round(rms(self._output_frame), 4) if self._output_frame is not None else 0.0,
            "latency_ms": round(self._latency_s * 1000.0, 1) if self._latency_s is not None else None,
        }

    def _summary_message(self) -> dict[str, Any]:
        return {"type": groups.SESSION_SUMMARY, "session": self.summary()}

    def _detail_message(self) -> dict[str, Any]:
        transcript = [{"id": key, **entry} for key, entry in self.transcript.items()]
        return {"type": groups.SESSION_DETAIL, "session": self.summary(), "transcript": transcript}

    def _state(self) -> str:
        if not self.live:
            return "responding" if self.responding else "listening"
        if self.close_reason is not None:
            return "closed"
        speaking = self.responding or time.monotonic() - self._output_text_at < SPEAKING_HOLD_S
        return "speaking" if speaking else "listening"

    def _live_fragment(self, role: str, event: dict[str, Any]) -> None:
        """A Live transcript fragment: it extends the open entry of its speaker, or starts the next."""
        self.live = True
        if role == "assistant":
            self._output_text_at = time.monotonic()
        open_turn = self._live_turn
        entry = self.transcript.get(open_turn[0]) if open_turn is not None and open_turn[1] == role else None
        if entry is None:
            self._live_close()
            self._live_turns += 1
            key = f"turn_{self._live_turns}"
            self._live_turn = (key, role)
            entry = self._entry(key, role, "in_progress")
            entry["start_ms"] = event.get("start_ms")
        entry["text"] = (entry["text"] + str(event.get("delta", "")))[-ENTRY_CHARS:]
        entry["end_ms"] = event.get("end_ms")

    def _live_close(self) -> None:
        """The open Live entry is complete: the other speaker started, or the session closed."""
        if self._live_turn is not None:
            entry = self.transcript.get(self._live_turn[0])
            if entry is not None:
                entry["status"] = "completed"
            self._live_turn = None

    def _entry(self, key: str, role: str, status: str) -> dict[str, Any]:
        entry = self.transcript.get(key)
        if entry is None:
            entry = self.transcript[key] = {"role": role, "text": "", "status": status}
            while len(self.transcript) > TRANSCRIPT_ENTRIES:
                self.transcript.popitem(last=False)
        return entry

    async def _publish_forever(self) -> None:
        """At most one publish per interval, sooner for urgent changes, at least one per heartbeat."""
        loop = asyncio.get_running_loop()
        last = -self.interval_s
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), HEARTBEAT_S)
            except TimeoutError:
                pass  # nothing changed: publish anyway, as a heartbeat
            delay = last + self.interval_s - loop.time()
            if delay > 0 and not self._urgent.is_set():
                try:
                    await asyncio.wait_for(self._urgent.wait(), delay)
                except TimeoutError:
                    pass  # the interval is over
            self._wake.clear()
            self._urgent.clear()
            last = loop.time()
            await self._publish()

    async def _publish(self) -> None:
        try:
            await self.layer.group_send(groups.CONSOLES, self._summary_message())
            await self.layer.group_send(groups.watchers_group(self.facts.session_id), self._detail_message())
        except Exception:  # noqa: BLE001 - the console is an observer: its failures never end a call
            if not self._failing:
                log.warning("publishing session %s to the console failed", self.facts.session_id, exc_info=True)
            self._failing = True
        else:
            self._failing = False
