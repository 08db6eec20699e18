"""What one call into a RealtimeSession produces, as plain data for the connection to act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import records
from .companion import CompanionRequest


@dataclass
class Effects:
    """What one call into the session produced."""

    events: list[dict[str, Any]] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    records: list[records.Record] = field(default_factory=list)
    transcriptions: list[TranscriptionRequest] = field(default_factory=list)
    companion: list[CompanionRequest] = field(default_factory=list)  # calls to the companion model
    # Text Moshi is to say in its own voice, in order (forced into its inner monologue by the
    # engine); `hush` first drops whatever forced text is still unsaid (a cancelled response).
    speak: list[str] = field(default_factory=list)
    hush: bool = False
    # The `event_id` of the client event these effects answer (set by RealtimeSession.receive), so
    # that an error the caller raises afterwards (input queue overflow) can name the event too.
    client_event_id: str | None = None

    def extend(self, other: Effects) -> None:
        self.events.extend(other.events)
        self.frames.extend(other.frames)
        self.records.extend(other.records)
        self.transcriptions.extend(other.transcriptions)
        self.companion.extend(other.companion)
        if other.hush:
            self.speak.clear()
            self.hush = True
        self.speak.extend(other.speak)


@dataclass(frozen=True)
class TranscriptionRequest:
    """A committed user turn to transcribe (24 kHz float32 audio) with the session's settings."""

    item_id: str
    audio: np.ndarray
    model: str
    language: str | None
    prompt: str | None
