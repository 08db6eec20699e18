"""The call's audio: RTP (Opus, 48 kHz, decoded by aiortc) in and out, 24 kHz mono pcm16 inside.

Inbound: each decoded frame (s16, 48 kHz, usually stereo) is mixed to mono and resampled to 24 kHz
(soxr, streaming); every 100 ms of it becomes one `input_audio_buffer.append`, as a WebSocket client
would send it, so validation, limits and the recorder are the WebSocket path's own.

Outbound: the response's audio (24 kHz pcm16, from the audio deltas the runtime would have sent on
a WebSocket) is resampled to 48 kHz and played by `OutputTrack`, 20 ms a frame, paced in real time,
silence when there is nothing to play.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

WIRE_RATE = 48000
MODEL_RATE = 24000
FRAME_SAMPLES = WIRE_RATE // 50  # 20 ms at 48 kHz, what browsers send and expect
APPEND_MS = 100
APPEND_BYTES = MODEL_RATE * 2 * APPEND_MS // 1000  # pcm16 mono
MAX_QUEUED_S = 120  # the most output audio held for playback; beyond it the oldest is dropped


class InboundAudio:
    """Decoded RTP frames in, 24 kHz mono pcm16 chunks of APPEND_MS out."""

    def __init__(self) -> None:
        self._resampler: soxr.ResampleStream | None = None
        self._rate = 0
        self._pending = bytearray()

    def add(self, frame: av.AudioFrame) -> list[bytes]:
        """The whole chunks that this frame completes (none, one or more)."""
        samples = frame.to_ndarray()
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            mono = samples.astype(np.float32).mean(axis=0)
        else:
            mono = samples.reshape(-1, channels).astype(np.float32).mean(axis=1)
        if frame.format.name.startswith("s16"):
            mono /= 32768.0
        if self._resampler is None or frame.sample_rate != self._rate:
            self._rate = frame.sample_rate
            self._resampler = soxr.ResampleStream(self._rate, MODEL_RATE, 1, dtype="float32", quality="MQ")
        out = self._resampler.resample_chunk(mono.astype(np.float32))
        self._pending += (np.clip(out, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        chunks = []
        while len(self._pending) >= APPEND_BYTES:
            chunks.append(bytes(self._pending[:APPEND_BYTES]))
            del self._pending[:APPEND_BYTES]
        return chunks


class OutputTrack(MediaStreamTrack):
    """The server's voice: 48 kHz mono frames of 20 ms, in real time; silence when idle.

    ``on_drained`` is called (on the event loop) when the queued audio has all been played.
    """

    kind = "audio"

    def __init__(self, on_drained: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._resampler = soxr.ResampleStream(MODEL_RATE, WIRE_RATE, 1, dtype="int16", quality="MQ")
        self._queue = bytearray()  # 48 kHz mono pcm16 waiting to be played
        self._pts = 0
        self._start: float | None = None
        self.on_drained = on_drained
        self.played_samples = 0

    @property
    def queued(self) -> bool:
        return bool(self._queue)

    def push(self, pcm24: bytes) -> None:
        """Queue 24 kHz mono pcm16 for playback."""
        if not pcm24:
            return
        samples = np.frombuffer(pcm24[: len(pcm24) // 2 * 2], dtype="<i2")
        self._queue += self._resampler.resample_chunk(samples).astype("<i2").tobytes()
        excess = len(self._queue) - MAX_QUEUED_S * WIRE_RATE * 2
        if excess > 0:
            del self._queue[:excess]

    def clear(self) -> bool:
        """Drop what is queued; True when something was."""
        had = bool(self._queue)
        self._queue.clear()
        self._resampler = soxr.ResampleStream(MODEL_RATE, WIRE_RATE, 1, dtype="int16", quality="MQ")
        return had

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / WIRE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # real-time pacing
            elif wait < -0.5:  # fell far behind (a stalled loop): resume from now, do not burst
                self._start = time.monotonic() - self._pts / WIRE_RATE
        size = FRAME_SAMPLES * 2
        had_audio = bool(self._queue)
        chunk = bytes(self._queue[:size])
        del self._queue[:size]
        if had_audio:
            self.played_samples += len(chunk) // 2
        if len(chunk) < size:
            chunk += bytes(size - len(chunk))
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(chunk)
        frame.sample_rate = WIRE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, WIRE_RATE)
        self._pts += FRAME_SAMPLES
        if had_audio and not self._queue and self.on_drained is not None:
            self.on_drained()
        return frame
