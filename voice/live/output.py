"""What the client hears each 80 ms: the model's audio while it speaks, digital silence otherwise,
or an audio fixture being played in its place.

The Live API streams output continuously, silence included, and LiveKit decides that the agent
stopped talking from output loudness (below about -59 dBFS for 0.8 s). Moshi's own "silence" is
low noise, so it is replaced by exact zeros outside speech, by the activity rule the Realtime
responses use (voice/protocol/responses.py ResponsePolicy): a frame with a text token or louder
than ``activity_rms`` is activity, and ``end_silence_ms`` without activity ends the speech.
"""

from __future__ import annotations

import numpy as np

from voice.protocol.audio import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, rms
from voice.protocol.responses import ResponsePolicy

SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.float32)
MAX_FIXTURE_S = 30


class OutputGate:
    def __init__(self, policy: ResponsePolicy) -> None:
        self.policy = policy
        self.speaking = False
        self._quiet_frames = 0

    def frame(self, text: str | None, pcm: np.ndarray | None, hold: bool = False) -> np.ndarray:
        """``hold``: forced text is still to be said, so a pause between its words is speech."""
        active = hold or text is not None or (pcm is not None and rms(pcm) > self.policy.activity_rms)
        if active:
            self.speaking = True
            self._quiet_frames = 0
        elif self.speaking:
            self._quiet_frames += 1
            if self._quiet_frames * FRAME_MS >= self.policy.end_silence_ms:
                self.speaking = False
        if not self.speaking or pcm is None:
            return SILENCE
        return pcm

    def reset(self) -> None:
        self.speaking = False
        self._quiet_frames = 0


class Fixture:
    """A validated fixture (24 kHz float32) played one frame per model frame, the last one padded."""

    def __init__(self, samples: np.ndarray) -> None:
        self._samples = samples
        self._position = 0

    @staticmethod
    def too_long(samples: np.ndarray) -> bool:
        return samples.size > MAX_FIXTURE_S * SAMPLE_RATE

    def next_frame(self) -> np.ndarray:
        chunk = self._samples[self._position : self._position + FRAME_SAMPLES]
        self._position += FRAME_SAMPLES
        if chunk.size < FRAME_SAMPLES:
            chunk = np.concatenate([chunk, np.zeros(FRAME_SAMPLES - chunk.size, dtype=np.float32)])
        return chunk

    @property
    def finished(self) -> bool:
        return self._position >= self._samples.size
