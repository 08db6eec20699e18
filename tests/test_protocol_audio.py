"""Audio on the wire and Moshi's 80 ms frames: decoding, encoding, framing, and the session's append."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from voice.protocol import Dialect
from voice.protocol.audio import FRAME_SAMPLES, FrameAssembler, decode_pcm16, encode_pcm16, rms
from voice.protocol.errors import ProtocolError

from .protocol_client import BOTH, LOUD, ProtocolClient, pcm16_b64, types


def ramp(start: int, count: int) -> np.ndarray:
    """Distinct int16 sample values, so that any reordering or loss shows."""
    return (np.arange(start, start + count) % 65536 - 32768).astype("<i2")


def append(client: ProtocolClient, samples: np.ndarray) -> list[np.ndarray]:
    effects = client.send({"type": "input_audio_buffer.append", "audio": pcm16_b64(samples)})
    assert effects.events == []  # OpenAI answers an append with nothing
    return effects.frames


# --- decode / encode --------------------------------------------------------------------------


def test_decode_pcm16_is_little_endian_scaled_to_plus_minus_one() -> None:
    raw = b"\x00\x00" + b"\xff\x7f" + b"\x00\x80" + b"\x00\x40" + b"\xff\xff"
    samples = decode_pcm16(base64.b64encode(raw).decode())
    assert samples.dtype == np.float32
    assert samples.tolist() == [0.0, 32767 / 32768, -1.0, 0.5, -1 / 32768]


def test_decode_pcm16_of_nothing_is_empty() -> None:
    assert decode_pcm16("").size == 0


@pytest.mark.parametrize(
    ("audio", "code"),
    [(None, "invalid_type"), (123, "invalid_type"), ("%%%", "invalid_value"), ("AAAA", "invalid_value")],
    ids=["none", "number", "not-base64", "odd-bytes"],
)
def test_decode_pcm16_rejects_bad_audio(audio: object, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_pcm16(audio)
    assert (caught.value.code, caught.value.param) == (code, "audio")


def test_encode_then_decode_gives_the_samples_back() -> None:
    samples = ramp(-5000, 4000).astype(np.float32) / 32768
    assert np.array_equal(decode_pcm16(encode_pcm16(samples)), samples)


def test_encode_clips_out_of_range_samples() -> None:
    raw = base64.b64decode(encode_pcm16(np.array([2.0, -2.0, 1.0, -1.0], dtype=np.float32)))
    assert np.frombuffer(raw, dtype="<i2").tolist() == [32767, -32768, 32767, -32768]


def test_rms() -> None:
    assert rms(np.zeros(0, dtype=np.float32)) == 0.0
    assert rms(np.zeros(FRAME_SAMPLES, dtype=np.float32)) == 0.0
    assert rms(np.full(10, -0.5, dtype=np.float32)) == pytest.approx(0.5)
    assert rms(LOUD) == pytest.approx(0.5 / np.sqrt(2), rel=1e-2)


# --- FrameAssembler ---------------------------------------------------------------------------


def test_frames_are_cut_at_1920_samples_and_the_rest_is_kept() -> None:
    assembler = FrameAssembler()
    data = np.arange(FRAME_SAMPLES * 3 + 500, dtype=np.float32)
    frames = assembler.push(data[:1000])
    assert frames == []
    frames = assembler.push(data[1000:])
    assert [f.size for f in frames] == [FRAME_SAMPLES] * 3
    assert np.array_equal(np.concatenate(frames), data[: FRAME_SAMPLES * 3])
    [last] = assembler.push(np.zeros(FRAME_SAMPLES - 500, dtype=np.float32))
    assert np.array_equal(last[:500], data[FRAME_SAMPLES * 3 :])


def test_cleared_assembler_drops_its_partial_frame() -> None:
    assembler = FrameAssembler()
    assembler.push(np.ones(1000, dtype=np.float32))
    assembler.clear()
    [frame] = assembler.push(np.zeros(FRAME_SAMPLES, dtype=np.float32))
    assert not frame.any()


def test_frames_do_not_share_memory_with_the_input() -> None:
    data = np.zeros(FRAME_SAMPLES, dtype=np.float32)
    [frame] = FrameAssembler().push(data)
    data[:] = 1.0
    assert not frame.any()


# --- the session's input_audio_buffer.append --------------------------------------------------


@BOTH
def test_append_returns_whole_float32_frames_with_the_decoded_samples(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    samples = ramp(-20000, FRAME_SAMPLES * 2)
    frames = append(client, samples)
    assert len(frames) == 2
    assert all(frame.dtype == np.float32 and frame.shape == (FRAME_SAMPLES,) for frame in frames)
    assert np.array_equal(np.concatenate(frames), samples.astype(np.float32) / 32768)


def test_partial_frames_carry_over_between_appends() -> None:
    client = ProtocolClient()
    samples = ramp(100, FRAME_SAMPLES * 2 + 300)
    assert append(client, samples[:1000]) == []
    [first] = append(client, samples[1000:2500])
    assert np.array_equal(first, samples[:FRAME_SAMPLES].astype(np.float32) / 32768)
    [second] = append(client, samples[2500:])
    assert np.array_equal(second, samples[FRAME_SAMPLES : 2 * FRAME_SAMPLES].astype(np.float32) / 32768)


def test_clear_drops_the_partial_frame_too() -> None:
    client = ProtocolClient()
    append(client, np.full(1000, 12345))
    assert types(client.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    [frame] = append(client, np.zeros(FRAME_SAMPLES))
    assert not frame.any()


def test_a_commit_keeps_the_audio_stream_whole() -> None:
    """Committing ends a user item, not the audio: the model hears every sample in order."""
    client = ProtocolClient()
    samples = ramp(0, FRAME_SAMPLES * 2)
    [first] = append(client, samples[:2400])  # 100 ms: one frame out, 480 samples held back
    client.send({"type": "input_audio_buffer.commit"})
    [second] = append(client, samples[2400:])
    assert np.array_equal(np.concatenate([first, second]), samples.astype(np.float32) / 32768)


@BOTH
def test_model_audio_goes_out_as_pcm16_deltas(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.send({"type": "response.create"})
    delta_type = "response.output_audio.delta" if dialect is Dialect.GA else "response.audio.delta"
    [delta] = [event for event in client.output(None, LOUD).events if event["type"] == delta_type]
    decoded = decode_pcm16(delta["delta"])
    assert decoded.size == FRAME_SAMPLES
    assert np.abs(decoded - LOUD).max() <= 1 / 32768
