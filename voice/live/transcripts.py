"""User segments from the VAD, and transcript fragments of both speakers merged in time order.

The Live API times every transcript fragment on one session clock (ms since `session.start`), and
the SDK's transcript grouper treats a fragment that starts before the previous one, whichever the
speaker, as a reset. Moshi's text tokens are known at once, but the user's words only come back
from the ASR service after the user's segment has ended, with start times in the past. So output
fragments that start at or after the start of a user segment still being spoken or transcribed are
held back, and released, merged with the user's fragments, once its transcript arrives; but no
later than the end of the model's speech (`burst_ended`), and never for longer than
``max_hold_ms`` each. The frameworks pair output fragments with the audio burst they belong to:
LiveKit opens a text-only assistant message for a fragment that comes after its burst has ended,
pipecat reopens a turn it has closed. A user fragment that would then step back in time is stamped
at the last start sent instead (its words are late; the clock never goes back). Audio is never
held.

User segments are found on the session clock too: each model frame carries the VAD scores of the
client audio it heard (2 or 3 windows of 32 ms); a frame is speech when its best window passes the
threshold (with Silero's 0.15 hysteresis once speaking), and a segment ends after
``silence_ms`` without speech.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from voice.protocol.audio import FRAME_MS
from voice.protocol.ids import new_id

from .records import Fragment

HYSTERESIS = 0.15
# A segment's transcript is expected within this long (the transcriber's own timeouts and retries
# always end in a result or a failure well before); past it the segment is no longer waited for.
PENDING_MAX_MS = 120_000
PREROLL_FRAMES = 4  # audio before a segment's first speech frame, given to the ASR with it


@dataclass
class Segment:
    id: str
    start_ms: int
    end_ms: int
    frames: list[np.ndarray] = field(default_factory=list)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, dtype=np.float32)


class Segmenter:
    """Speech scores per frame in, finished user segments (with their 24 kHz audio) out."""

    def __init__(self, threshold: float, silence_ms: int, max_ms: int) -> None:
        self.threshold = threshold
        self.keep_threshold = max(threshold - HYSTERESIS, threshold / 2)
        self.silence_ms = silence_ms
        self.max_ms = max_ms
        self.open: Segment | None = None
        self._preroll: deque[np.ndarray] = deque(maxlen=PREROLL_FRAMES)
        self._speech_frames = 0

    def feed(self, frame_start_ms: int, speech: Sequence[float], audio: np.ndarray | None) -> list[Segment]:
        """One frame of client audio heard by the model; the segments it ends."""
        frame_end = frame_start_ms + FRAME_MS
        best = max(speech, default=0.0)
        done: list[Segment] = []
        segment = self.open
        if segment is None:
            if best >= self.threshold:
                segment = self.open = Segment(new_id("seg"), frame_start_ms, frame_end, list(self._preroll))
                self._preroll.clear()
                self._speech_frames = 1
            elif audio is not None:
                self._preroll.append(audio)
        elif best >= self.keep_threshold:
            segment.end_ms = frame_end
            self._speech_frames += 1
        if segment is not None and audio is not None:
            segment.frames.append(audio)
        if segment is not None and (
            frame_end - segment.end_ms >= self.silence_ms or frame_end - segment.start_ms >= self.max_ms
        ):
            done.append(self.close())
        return done

    def close(self) -> Segment:
        """End the open segment now (the session is closing, or the client muted)."""
        segment = self.open
        assert segment is not None
        self.open = None
        return segment


@dataclass
class _Pending:
    start_ms: int
    since_ms: int


class TranscriptMerger:
    """Fragments of both speakers out in non-decreasing `start_ms`; see the module docstring."""

    def __init__(self, max_hold_ms: int) -> None:
        self.max_hold_ms = max_hold_ms
        self._pending: dict[str, _Pending] = {}
        self._held: list[Fragment] = []
        self._held_since: dict[int, int] = {}  # id() of a held output fragment -> when it was held
        self._last_start = 0

    def segment_opened(self, segment_id: str, start_ms: int, now_ms: int) -> None:
        self._pending[segment_id] = _Pending(start_ms, now_ms)

    def segment_dropped(self, segment_id: str, now_ms: int) -> list[Fragment]:
        """No transcript will come for this segment (nothing to transcribe, or the ASR failed)."""
        self._pending.pop(segment_id, None)
        return self.release(now_ms)

    def output(self, fragment: Fragment, now_ms: int) -> list[Fragment]:
        self._held.append(fragment)
        self._held_since[id(fragment)] = now_ms
        return self.release(now_ms)

    def user_text(self, segment_id: str, text: str, start_ms: int, end_ms: int, now_ms: int) -> list[Fragment]:
        """A segment's transcript, as one fragment per word spread evenly over the segment."""
        self._pending.pop(segment_id, None)
        words = text.split()
        span = max(end_ms - start_ms, 0)
        for index, word in enumerate(words):
            begin = start_ms + span * index // len(words)
            end = start_ms + span * (index + 1) // len(words)
            self._held.append(Fragment("user", f" {word}" if index or self._last_start else word, begin, end))
        return self.release(now_ms)

    def release(self, now_ms: int) -> list[Fragment]:
        """What can go now: fragments starting before every pending segment, oldest first."""
        for segment_id, pending in list(self._pending.items()):
            if now_ms - pending.since_ms > PENDING_MAX_MS:  # an answer that never came: forget it
                del self._pending[segment_id]
        horizon = min((p.start_ms for p in self._pending.values()), default=None)
        # Stable: on equal starts the user's fragment goes first, as it was spoken first.
        self._held.sort(key=lambda f: (f.start_ms, f.speaker != "user"))
        ready: list[Fragment] = []
        while self._held and (
            horizon is None or self._held[0].start_ms < horizon or self._overdue(self._held[0], now_ms)
        ):
            fragment = self._held.pop(0)
            self._held_since.pop(id(fragment), None)
            start = max(fragment.start_ms, self._last_start)  # a late reply must not step back
            ready.append(Fragment(fragment.speaker, fragment.text, start, max(fragment.end_ms, start)))
            self._last_start = start
        return ready

    def burst_ended(self, now_ms: int) -> list[Fragment]:
        """The model stopped speaking: its held fragments go now, while the client still holds the
        audio burst they belong to open."""
        for key in self._held_since:
            self._held_since[key] = now_ms - self.max_hold_ms
        return self.release(now_ms)

    def _overdue(self, fragment: Fragment, now_ms: int) -> bool:
        """An output fragment held for max_hold_ms: it goes now, with (nearly) its own audio."""
        since = self._held_since.get(id(fragment))
        return since is not None and now_ms - since >= self.max_hold_ms

    def flush(self) -> list[Fragment]:
        """Everything held, at the close."""
        self._pending.clear()
        return self.release(0)
