"""Audio on the wire (base64 pcm16, 24 kHz mono) to and from Moshi's 80 ms float32 frames."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from .errors import ProtocolError

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920  # one Mimi frame: 24000 / 12.5
FRAME_MS = 80


def decode_pcm16(audio: object) -> np.ndarray:
    """Base64 pcm16 from `input_audio_buffer.append` to float32 in [-1, 1)."""
    if not isinstance(audio, str):
        raise ProtocolError("invalid_type", "Invalid type for 'audio': expected a base64 string.", param="audio")
    try:
        raw = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_value", "Invalid value for 'audio': not valid base64.", param="audio") from None
    if len(raw) % 2:
        raise ProtocolError(
            "invalid_value",
            f"Invalid value for 'audio': pcm16 needs an even number of bytes, got {len(raw)}.",
            param="audio",
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def encode_pcm16(samples: np.ndarray) -> str:
    """float32 samples to base64 pcm16 for `response.output_audio.delta`."""
    clipped = np.clip(samples, -1.0, 32767 / 32768)
    return base64.b64encode((clipped * 32768.0).astype("<i2").tobytes()).decode("ascii")


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


class FrameAssembler:
    """Cuts a stream of arbitrary-sized chunks into whole 1920-sample frames.

    Holds less than one frame between calls, so its memory is bounded whatever the client sends.
    """

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = data.size // FRAME_SAMPLES
        frames = [data[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].copy() for i in range(whole)]
        self._pending = data[whole * FRAME_SAMPLES :].copy()
        return frames

    def clear(self) -> int:
        """Drop the partial frame; returns how many samples it held (they never reach the model)."""
        dropped = self._pending.size
        self._pending = np.zeros(0, dtype=np.float32)
        return dropped
