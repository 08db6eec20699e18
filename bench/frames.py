"""The unit every part of the benchmark counts in: one 80 ms frame of 24 kHz mono pcm16.

The clients send exactly one frame per append, the model steps once per frame, and the matching
pairs frames with the audio deltas those steps produce; the sizes are written here once so that
the clients, the matching and the summary cannot disagree about them.
"""

from __future__ import annotations

SAMPLE_RATE = 24000
FRAME_S = 0.08
FRAME_SAMPLES = 1920
FRAME_BYTES = FRAME_SAMPLES * 2
