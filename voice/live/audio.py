"""Live API audio formats on the wire, to and from Moshi's 80 ms frames of 24 kHz float32.

The Live API fixes one format per session for both directions: raw mono PCM16LE at 24 or 16 kHz,
or G.711 mu-law / A-law at 8 kHz. Moshi only speaks 24 kHz, so input is decoded and resampled to
24 kHz (then cut into 1920-sample frames by the caller) and each output frame is resampled and
encoded back. Resampling is soxr's streaming resampler, so chunk boundaries leave no clicks.
G.711 is done with 256-entry decode tables and 65536-entry encode tables built once from the ITU
algorithms (the same ones the removed `audioop` module used); tests/test_live_audio.py pins them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np
import soxr

from voice.protocol.audio import FRAME_SAMPLES, SAMPLE_RATE
from voice.protocol.errors import ProtocolError


@dataclass(frozen=True)
class AudioFormat:
    """One Live `audio.format`: ``audio/pcm`` (16 or 24 kHz), ``audio/pcmu`` or ``audio/pcma`` (8 kHz)."""

    type: str = "audio/pcm"
    rate: int = SAMPLE_RATE

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.type == "audio/pcm" else 1

    @property
    def frame_samples(self) -> int:
        """Samples of one 80 ms frame in this format."""
        return FRAME_SAMPLES * self.rate // SAMPLE_RATE

    def as_json(self) -> dict[str, object]:
        return {"type": self.type, "rate": self.rate}


DEFAULT_FORMAT = AudioFormat()
SUPPORTED_RATES = {"audio/pcm": (16000, 24000), "audio/pcmu": (8000,), "audio/pcma": (8000,)}


# --- G.711 ------------------------------------------------------------------------------------

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def _ulaw_encode(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = max((magnitude >> 7).bit_length() - 1, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_decode(byte: int) -> int:
    byte = ~byte & 0xFF
    magnitude = (((byte & 0x0F) << 3) + _ULAW_BIAS) << ((byte & 0x70) >> 4)
    return _ULAW_BIAS - magnitude if byte & 0x80 else magnitude - _ULAW_BIAS


_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _alaw_encode(sample: int) -> int:
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    segment = next((i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    code = segment << 4
    code |= (value >> 1 if segment < 2 else value >> segment) & 0x0F
    return code ^ mask


def _alaw_decode(byte: int) -> int:
    byte ^= 0x55
    magnitude = (byte & 0x0F) << 4
    segment = (byte & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    elif segment == 1:
        magnitude += 0x108
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if byte & 0x80 else -magnitude


_ALL_INT16 = range(-32768, 32768)
ULAW_DECODE = np.array([_ulaw_decode(b) for b in range(256)], dtype=np.int16)
ALAW_DECODE = np.array([_alaw_decode(b) for b in range(256)], dtype=np.int16)
# Indexed by the int16 sample + 32768.
ULAW_ENCODE = np.array([_ulaw_encode(s) for s in _ALL_INT16], dtype=np.uint8)
ALAW_ENCODE = np.array([_alaw_encode(s) for s in _ALL_INT16], dtype=np.uint8)


# --- wire <-> float32 -------------------------------------------------------------------------


def _b64(audio: str, param: str) -> bytes:
    try:
        return base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_value", f"Invalid value for '{param}': not valid base64.", param=param) from None


def decode_pcm16_24k(audio: str, param: str = "audio") -> np.ndarray:
    """Base64 PCM16LE (fixtures are always 24 kHz PCM16) to float32 in [-1, 1)."""
    raw = _b64(audio, param)
    if len(raw) % 2:
        raise ProtocolError(
            "invalid_value",
            f"Invalid value for '{param}': PCM16 needs an even number of bytes, got {len(raw)}.",
            param=param,
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


class InputDecoder:
    """Client audio in the session's format to 24 kHz float32, resampled as one continuous stream."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = None if fmt.rate == SAMPLE_RATE else soxr.ResampleStream(fmt.rate, SAMPLE_RATE, 1, "float32")

    def decode(self, audio: str) -> np.ndarray:
        """One append's base64 payload; ProtocolError (param `audio`) when it is not valid for the format."""
        if self.format.type == "audio/pcm":
            samples = decode_pcm16_24k(audio)
        else:
            table = ULAW_DECODE if self.format.type == "audio/pcmu" else ALAW_DECODE
            codes = np.frombuffer(_b64(audio, "audio"), dtype=np.uint8)
            samples = table[codes].astype(np.float32) / 32768.0
        if self._resampler is None or not samples.size:
            return samples
        return self._resampler.resample_chunk(samples)


class OutputEncoder:
    """24 kHz float32 frames to base64 in the session's format: exactly one 80 ms of audio per frame.

    The streaming resampler's output per chunk varies by a few hundred samples, so its output goes
    through a FIFO from which each frame takes exactly ``frame_samples`` (zeros in front while the
    resampler is still filling, which happens only at the start).
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = None if fmt.rate == SAMPLE_RATE else soxr.ResampleStream(SAMPLE_RATE, fmt.rate, 1, "float32")
        self._fifo = np.zeros(0, dtype=np.float32)

    def encode(self, frame: np.ndarray) -> str:
        samples = frame.astype(np.float32, copy=False)
        if self._resampler is not None:
            need = self.format.frame_samples
            data = np.concatenate([self._fifo, self._resampler.resample_chunk(samples)])
            if data.size < need:
                data = np.concatenate([np.zeros(need - data.size, dtype=np.float32), data])
            samples, self._fifo = data[:need], data[need:]
        pcm = to_int16(samples)
        if self.format.type == "audio/pcm":
            raw = pcm.astype("<i2").tobytes()
        else:
            table = ULAW_ENCODE if self.format.type == "audio/pcmu" else ALAW_ENCODE
            raw = table[pcm.astype(np.int32) + 32768].tobytes()
        return base64.b64encode(raw).decode("ascii")
