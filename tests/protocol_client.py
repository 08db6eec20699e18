"""A hand-played Moshi and a client for RealtimeSession: the protocol tests' shared helpers.

The model is played by hand: `client.output(text, pcm)` is one 80 ms frame of Moshi's output, and
`client.hear(*probabilities)` one tick's voice-activity scores of the client's audio (one per 32 ms
window). Responses open on `response.create` or when server turn detection commits a user turn
(`client.user_turn()`); model output outside a response reaches nobody. Every server event is
validated strictly.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voice.protocol import Dialect, Effects, RealtimeSession, SessionOptions
from voice.protocol.audio import FRAME_SAMPLES
from voice.protocol.records import ItemStored
from voice.protocol.responses import ResponsePolicy

from .strict import strict

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


# What LiveKit, openai-agents and pipecat send in session.update, merged (README, frameworks).
FRAMEWORK_SESSION = {
    "type": "realtime",
    "model": "gpt-realtime-2.1",
    "tracing": "auto",
    "instructions": "You are a helpful voice AI assistant.",
    "output_modalities": ["audio"],
    "max_output_tokens": "inf",
    "tool_choice": "auto",
    "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "noise_reduction": None,
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "turn_detection": {
                "type": "semantic_vad",
                "eagerness": "medium",
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
    },
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
