"""Server turn detection: speech probabilities in, speech_started / speech_stopped out.

The VAD model (Silero, on the inference thread) scores each 32 ms window of the client's audio;
this state machine applies the session's `turn_detection` settings to those scores:

- speech starts at the first window at or above ``threshold``; `audio_start_ms` is moved back by
  ``prefix_padding_ms``, as OpenAI does (it marks the start of the audio the model is given);
- speech goes on while windows stay above ``threshold - 0.15`` (Silero's recommended hysteresis),
  but never below ``threshold / 2``: with a low threshold even silence would keep speech going;
- it stops after ``silence_duration_ms`` below that; `audio_end_ms` is the end of the last speech.

`semantic_vad` is served by the same detector, its eagerness mapped to a silence duration.
Times are milliseconds of client audio since the session started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

WINDOW_MS = 32
HYSTERESIS = 0.15
DEFAULT_SILENCE_MS = 500
# semantic_vad: how long a pause ends the turn, by eagerness ("auto" is "medium").
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 300}


@dataclass(frozen=True)
class TurnEvent:
    kind: Literal["started", "stopped"]
    audio_ms: int


class TurnDetector:
    def __init__(self) -> None:
        self.clock_ms = 0
        self.speaking = False
        self._last_speech_end_ms = 0

    def feed(self, probabilities: Sequence[float], turn_detection: dict[str, Any] | None) -> list[TurnEvent]:
        """Advance over the windows of one input frame; turn detection off only moves the clock."""
        events: list[TurnEvent] = []
        if turn_detection is None:
            self.clock_ms += WINDOW_MS * len(probabilities)
            self.speaking = False
            return events
        threshold, prefix_ms, silence_ms = _settings(turn_detection)
        # A low threshold must not make every window count as speech (0.1 - 0.15 < 0): keep half of it.
        keep_threshold = max(threshold - HYSTERESIS, threshold / 2)
        for probability in probabilities:
            window_start = self.clock_ms
            self.clock_ms += WINDOW_MS
            if not self.speaking:
                if probability >= threshold:
                    self.speaking = True
                    self._last_speech_end_ms = self.clock_ms
                    events.append(TurnEvent("started", max(0, window_start - prefix_ms)))
            elif probability >= keep_threshold:
                self._last_speech_end_ms = self.clock_ms
            elif self.clock_ms - self._last_speech_end_ms >= silence_ms:
                self.speaking = False
                events.append(TurnEvent("stopped", self._last_speech_end_ms))
        return events


def _settings(turn_detection: dict[str, Any]) -> tuple[float, int, int]:
    if turn_detection.get("type") == "semantic_vad":
        eagerness = turn_detection.get("eagerness") or "auto"
        return 0.5, 300, SEMANTIC_SILENCE_MS.get(eagerness, SEMANTIC_SILENCE_MS["auto"])
    threshold = turn_detection.get("threshold")
    prefix = turn_detection.get("prefix_padding_ms")
    silence = turn_detection.get("silence_duration_ms")
    return (
        0.5 if threshold is None else float(threshold),
        300 if prefix is None else int(prefix),
        DEFAULT_SILENCE_MS if silence is None else int(silence),
    )
