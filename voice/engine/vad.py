"""Speech probability of the client's audio, per 32 ms window, with Silero VAD.

Silero VAD ships its model inside the PyPI package (no download) and runs on the CPU in well under
a millisecond per window. It wants 16 kHz, so the 24 kHz input is resampled with soxr's streaming
resampler. This is model work, so it runs on the inference thread next to Moshi, one detector per
slot; the protocol's TurnDetector turns the probabilities into speech_started / speech_stopped.
"""

from __future__ import annotations

import numpy as np
import soxr
import torch
from silero_vad import load_silero_vad

VAD_RATE = 16000
WINDOW_SAMPLES = 512  # what Silero takes at 16 kHz: 32 ms


class SpeechDetector:
    def __init__(self) -> None:
        self._model = load_silero_vad()
        self.reset()

    def reset(self) -> None:
        """Start a new stream: the model's recurrent state, the resampler and the window buffer."""
        self._model.reset_states()
        self._resampler = soxr.ResampleStream(24000, VAD_RATE, 1, dtype="float32")
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, frame: np.ndarray) -> list[float]:
        """Speech probabilities of the whole 32 ms windows completed by this 24 kHz frame."""
        resampled = self._resampler.resample_chunk(frame)
        data = np.concatenate([self._pending, resampled]) if self._pending.size else resampled
        probabilities = []
        offset = 0
        while data.size - offset >= WINDOW_SAMPLES:
            window = torch.from_numpy(np.ascontiguousarray(data[offset : offset + WINDOW_SAMPLES]))
            probabilities.append(float(self._model(window, VAD_RATE).item()))
            offset += WINDOW_SAMPLES
        self._pending = data[offset:].copy()
        return probabilities
