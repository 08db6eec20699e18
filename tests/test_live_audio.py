"""Live audio formats: the G.711 tables against known ITU values, and the resampling paths."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from voice.live.audio import (
    ALAW_DECODE,
    ALAW_ENCODE,
    ULAW_DECODE,
    ULAW_ENCODE,
    AudioFormat,
    InputDecoder,
    OutputEncoder,
)
from voice.protocol.errors import ProtocolError

# Values from the ITU-T G.711 tables (the ones audioop.ulaw2lin / alaw2lin returned).
ULAW_KNOWN = {0x00: -32124, 0x0F: -16764, 0x7E: -8, 0x7F: 0, 0x80: 32124, 0x8F: 16764, 0xFE: 8, 0xFF: 0}
ALAW_KNOWN = {0x55: -8, 0xD5: 8, 0x2A: -32256, 0xAA: 32256, 0x54: -24, 0xD4: 24}


def test_ulaw_table() -> None:
    assert {code: int(ULAW_DECODE[code]) for code in ULAW_KNOWN} == ULAW_KNOWN
    codes = [c for c in range(256) if c != 0x7F]  # 0x7F and 0xFF both decode to 0; 0 encodes as 0xFF
    assert [int(ULAW_ENCODE[int(ULAW_DECODE[c]) + 32768]) for c in codes] == codes


def test_alaw_table() -> None:
    assert {code: int(ALAW_DECODE[code]) for code in ALAW_KNOWN} == ALAW_KNOWN
    assert [int(ALAW_ENCODE[int(ALAW_DECODE[c]) + 32768]) for c in range(256)] == list(range(256))


@pytest.mark.parametrize("table", [(ULAW_ENCODE, ULAW_DECODE), (ALAW_ENCODE, ALAW_DECODE)])
def test_companding_error_is_small(table: tuple[np.ndarray, np.ndarray]) -> None:
    encode, decode = table
    ramp = np.arange(-32768, 32768, 7, dtype=np.int32)
    back = decode[encode[ramp + 32768]].astype(np.int32)
    assert np.all(np.abs(back - ramp) <= np.maximum(np.abs(ramp) // 16, 16) + 8)
    assert np.all(np.diff(decode[encode[ramp + 32768]][ramp >= 0].astype(np.int32)) >= 0)  # monotonic


def sine(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize(("kind", "rate"), [("audio/pcm", 16000), ("audio/pcmu", 8000), ("audio/pcma", 8000)])
def test_input_resampled_to_24k(kind: str, rate: int) -> None:
    fmt = AudioFormat(kind, rate)
    samples = (sine(rate, 1.0) * 32767).astype(np.int16)
    if kind == "audio/pcm":
        raw = samples.astype("<i2").tobytes()
    else:
        raw = (ULAW_ENCODE if kind == "audio/pcmu" else ALAW_ENCODE)[samples.astype(np.int32) + 32768].tobytes()
    decoder = InputDecoder(fmt)
    step = len(raw) // 10
    out = np.concatenate(
        [decoder.decode(base64.b64encode(raw[i : i + step]).decode()) for i in range(0, len(raw), step)]
    )
    assert 23000 <= out.size <= 24000
    middle = out[4000:20000]
    assert abs(float(np.sqrt(np.mean(middle**2))) - 0.3 / np.sqrt(2)) < 0.02


@pytest.mark.parametrize(
    ("kind", "rate", "size"), [("audio/pcm", 24000, 3840), ("audio/pcm", 16000, 2560), ("audio/pcma", 8000, 640)]
)
def test_output_frames_are_exactly_80_ms(kind: str, rate: int, size: int) -> None:
    encoder = OutputEncoder(AudioFormat(kind, rate))
    source = sine(24000, 2.0)
    sizes = {len(base64.b64decode(encoder.encode(source[i : i + 1920]))) for i in range(0, source.size, 1920)}
    assert sizes == {size}


def test_odd_pcm_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        InputDecoder(AudioFormat()).decode(base64.b64encode(b"\x00\x01\x02").decode())
    assert caught.value.param == "audio"
