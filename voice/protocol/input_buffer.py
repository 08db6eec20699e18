"""The client's recent input audio, kept so a committed turn can be sent for transcription.

Positions are absolute: samples since the session's first append, the same clock as the
`audio_start_ms` / `audio_end_ms` of turn detection. Bounded: audio older than MAX_SECONDS before
the newest is dropped, whatever the client sends.
"""

from __future__ import annotations

import collections

import numpy as np

from .audio import SAMPLE_RATE

MAX_SECONDS = 60


class InputAudioBuffer:
    def __init__(self, max_seconds: int = MAX_SECONDS) -> None:
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._held = 0
        self._max = max_seconds * SAMPLE_RATE
        self.start = 0  # absolute index of the first sample held
        self.total = 0  # samples appended since the session started

    @property
    def buffered_samples(self) -> int:
        """Samples appended since the last commit or clear (what `commit` would commit)."""
        return self.total - self.start

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append(samples)
        self._held += samples.size
        self.total += samples.size
        while self._held - self._chunks[0].size >= self._max:
            dropped = self._chunks.popleft()
            self._held -= dropped.size
            self.start += dropped.size

    def take(self, start_ms: int | None = None, end_ms: int | None = None) -> np.ndarray:
        """The audio from ``start_ms`` to ``end_ms`` (default: all held); audio before the end is dropped."""
        held = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        begin = 0 if start_ms is None else min(max(start_ms * SAMPLE_RATE // 1000 - self.start, 0), held.size)
        end = held.size if end_ms is None else min(max(end_ms * SAMPLE_RATE // 1000 - self.start, begin), held.size)
        segment = held[begin:end].copy()
        rest = held[end:]
        self._chunks = collections.deque([rest] if rest.size else [])
        self._held = rest.size
        self.start += end
        return segment

    def clear(self) -> None:
        self.take()

    def forget_latest(self, samples: int) -> None:
        """Audio the model never heard (dropped on input overflow, or a partial frame cleared) leaves
        the clock too, so positions keep matching turn detection's, which counts only what it scored."""
        removed = 0
        while self._chunks and removed < samples:
            last = self._chunks.pop()
            keep = max(last.size - (samples - removed), 0)
            removed += last.size - keep
            if keep:
                self._chunks.append(last[:keep])
        self._held -= removed
        self.total -= samples
        self.start = min(self.start, self.total)
