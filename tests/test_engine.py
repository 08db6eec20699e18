"""The batched engine on the demo checkpoint: slots are isolated, bounded, restartable and long-lived."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from voice.engine.batched import BatchedEngine
from voice.engine.checkpoint import load_model
from voice.engine.slots import FrameOutput, Slot

from .conftest import TIMEOUT


def make_engine(checkpoint: Path, batch_size: int = 4, inbox_frames: int = 64) -> BatchedEngine:
    """An engine with greedy decoding, so that the same input gives the same output."""
    model = load_model(str(checkpoint), torch.device("cpu"))
    engine = BatchedEngine(
        model,
        batch_size=batch_size,
        tick_s=0.0,
        inbox_frames=inbox_frames,
        compile=False,
        lm_gen_overrides={"use_sampling": False},
    )
    engine.start()
    return engine


def speech_like(seed: int, frames: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal(1920)).astype(np.float32) for _ in range(frames)]


async def collect(slot: Slot, count: int) -> list[FrameOutput]:
    """The next ``count`` outputs that carry model audio (a restarted slot's first one has none)."""
    outputs = []
    while len(outputs) < count:
        item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        assert isinstance(item, FrameOutput), item
        if item.pcm is not None:
            outputs.append(item)
    return outputs


def assert_same(a: list[FrameOutput], b: list[FrameOutput]) -> None:
    assert [o.text for o in a] == [o.text for o in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.pcm, y.pcm, atol=1e-4)


@pytest.fixture
def engine(demo_checkpoint: Path):
    engine = make_engine(demo_checkpoint)
    yield engine
    engine.stop()


async def run_alone(checkpoint: Path, frames: list[np.ndarray], batch_size: int = 4) -> list[FrameOutput]:
    engine = make_engine(checkpoint, batch_size=batch_size)
    try:
        slot = engine.acquire(asyncio.get_running_loop())
        assert slot is not None
        for frame in frames:
            assert slot.push(frame)
        return await collect(slot, len(frames) - 1)
    finally:
        engine.stop()


async def test_sessions_in_one_batch_hear_only_their_own_audio(engine: BatchedEngine, demo_checkpoint: Path) -> None:
    loop = asyncio.get_running_loop()
    first, second = engine.acquire(loop), engine.acquire(loop)
    assert first is not None and second is not None
    a, b = speech_like(1, 12), speech_like(2, 12)
    for x, y in zip(a, b, strict=True):
        first.push(x)
        second.push(y)
    together_a, together_b = await collect(first, 11), await collect(second, 11)
    alone_a, alone_b = await run_alone(demo_checkpoint, a), await run_alone(demo_checkpoint, b)
    assert_same(together_a, alone_a)
    assert_same(together_b, alone_b)
    assert [o.text for o in together_a] != [o.text for o in together_b] or not np.allclose(
        together_a[-1].pcm, together_b[-1].pcm
    ), "different inputs should give different outputs"


async def test_a_new_session_restarts_only_its_own_slot(engine: BatchedEngine, demo_checkpoint: Path) -> None:
    loop = asyncio.get_running_loop()
    steady = engine.acquire(loop)
    assert steady is not None
    frames = speech_like(3, 16)
    for frame in frames[:8]:
        steady.push(frame)
    outputs = await collect(steady, 7)
    newcomer = engine.acquire(loop)  # restarts its slot while `steady` is mid-stream
    assert newcomer is not None
    for index, frame in enumerate(frames[8:]):
        steady.push(frame)
        newcomer.push(speech_like(100 + index, 1)[0])
    outputs += await collect(steady, 8)
    await collect(newcomer, 7)
    assert_same(outputs, await run_alone(demo_checkpoint, frames))


async def test_slots_are_bounded_and_come_back(engine: BatchedEngine) -> None:
    loop = asyncio.get_running_loop()
    slots = [engine.acquire(loop) for _ in range(4)]
    assert all(slots) and engine.acquire(loop) is None
    slots[2].release()
    assert engine.slots_in_use == 3
    again = engine.acquire(loop)
    assert again is not None and again.index == 2
    for slot in (*slots[:2], slots[3], again):
        slot.release()
    assert engine.slots_in_use == 0


async def test_input_queue_is_bounded(demo_checkpoint: Path) -> None:
    model = load_model(str(demo_checkpoint), torch.device("cpu"))
    # Not started: no thread consumes frames, so the inbox fills exactly to its bound.
    engine = BatchedEngine(model, batch_size=2, tick_s=0.0, inbox_frames=3, compile=False)
    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    assert [slot.push(np.zeros(1920, np.float32)) for _ in range(4)] == [True, True, True, False]
    assert slot.queued_frames == 3


async def test_an_open_response_keeps_the_model_talking_without_input(engine: BatchedEngine) -> None:
    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    slot.set_keep_running(True)
    outputs = await collect(slot, 5)
    slot.set_keep_running(False)
    assert all(o.pcm is not None and o.pcm.shape == (1920,) for o in outputs)
    assert not any(o.client_audio or o.speech for o in outputs), "server-fed silence is not the client's audio"


async def test_a_call_longer_than_the_model_context_goes_on(engine: BatchedEngine) -> None:
    context = engine.model.lm.transformer.layers[0].self_attn.context
    assert context == 50, "the test fixture writes a demo checkpoint with a 50-frame context"
    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    frames = speech_like(4, 2 * context + 10)
    sent = 0
    outputs: list[FrameOutput] = []
    while sent < len(frames):
        while sent < len(frames) and slot.push(frames[sent]):
            sent += 1
        outputs += await collect(slot, min(10, sent - 1 - len(outputs)))
    outputs += await collect(slot, len(frames) - 1 - len(outputs))
    assert len(outputs) == len(frames) - 1
    assert outputs[-1].pcm is not None and np.isfinite(outputs[-1].pcm).all()


async def test_each_client_frame_comes_back_with_its_speech_scores(engine: BatchedEngine) -> None:
    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    for frame in speech_like(5, 10):
        slot.push(frame)
    outputs = []
    while len(outputs) < 10:
        outputs.append(await asyncio.wait_for(slot.outbox.get(), TIMEOUT))
    assert all(isinstance(o, FrameOutput) and o.client_audio for o in outputs)
    assert outputs[0].pcm is None, "a restarted slot's first frame has no generated output yet"
    windows = sum(len(o.speech) for o in outputs)
    assert 20 <= windows <= 25, "800 ms of audio is 25 windows of 32 ms, less the resampler's delay"
    assert all(0.0 <= p <= 1.0 for o in outputs for p in o.speech)


async def test_the_serial_baseline_steps_one_session_at_a_time(demo_checkpoint: Path) -> None:
    from voice.engine.serial import SerialPool

    model = load_model(str(demo_checkpoint), torch.device("cpu"))
    pool = SerialPool(model, sessions=2, tick_s=0.0, inbox_frames=64, compile=False)
    pool.start()
    try:
        loop = asyncio.get_running_loop()
        first, second = pool.acquire(loop), pool.acquire(loop)
        assert first is not None and second is not None and pool.acquire(loop) is None
        first_engine, second_engine = pool.engines
        assert first_engine.slots[0] is first and second_engine.slots[0] is second, "one engine per session"
        assert first_engine.step_lock is second_engine.step_lock, "one lock for every session"
        assert first_engine.model.lm is not second_engine.model.lm, "each session has its own state"
        for x, y in zip(speech_like(6, 6), speech_like(7, 6), strict=True):
            first.push(x)
            second.push(y)
        assert len(await collect(first, 5)) == 5 and len(await collect(second, 5)) == 5
        first.release()
        assert pool.slots_in_use == 1
    finally:
        pool.stop()


async def test_a_client_that_reads_slowly_cannot_grow_the_output_queue(engine: BatchedEngine) -> None:
    from voice.engine.slots import OUTBOX_FRAMES

    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    silence = np.zeros(1920, np.float32)
    for _ in range(OUTBOX_FRAMES + 36):  # nobody reads: the session's sender is stuck
        slot._deliver(FrameOutput(text=None, pcm=silence, speech=[], client_audio=True, latency_s=0.0))
    assert slot.outbox.qsize() == OUTBOX_FRAMES and slot.dropped_outputs == 36
    slot.release()


async def test_dropped_output_keeps_its_speech_scores_for_turn_detection(engine: BatchedEngine) -> None:
    from voice.engine.slots import OUTBOX_FRAMES

    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    silence = np.zeros(1920, np.float32)
    for n in range(OUTBOX_FRAMES + 1):
        slot._deliver(FrameOutput(text=None, pcm=silence, speech=[n / 100], client_audio=True, latency_s=0.0))
    first = await slot.outbox.get()
    assert isinstance(first, FrameOutput) and first.speech == [0.0, 0.01], "the dropped frame's window comes first"
    slot.release()


def test_the_engine_package_imports_neither_django_nor_channels() -> None:
    """The engine is model code only: no web framework, and no import of the metrics that watch it."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, voice.engine.manager, voice.engine.batched, voice.engine.serial\n"
        "outside = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'channels', 'prometheus_client')"
        " or (m.startswith('voice.') and not m.startswith('voice.engine')))\n"
        "assert not outside, outside\n"
    )
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


async def test_a_paced_slot_never_steps_ahead_of_the_tick(demo_checkpoint: Path) -> None:
    """A Live session's backlog (a client flushing seconds of audio) is stepped one frame per tick."""
    model = load_model(str(demo_checkpoint), torch.device("cpu"))
    engine = BatchedEngine(model, batch_size=2, tick_s=0.08, inbox_frames=64, compile=False)
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        paced, free = engine.acquire(loop), engine.acquire(loop)
        assert paced is not None and free is not None
        paced.paced = True
        for frame in speech_like(3, 12):
            paced.push(frame)
        for frame in speech_like(4, 12):
            free.push(frame)
        started = time.perf_counter()
        await collect(free, 11)  # a restarted slot's first output carries no audio
        caught_up = time.perf_counter() - started
        await collect(paced, 11)
        paced_took = time.perf_counter() - started
        # The unpaced slot catches up at once; the paced one takes its 12 ticks of 80 ms.
        assert paced_took >= 11 * 0.08 * 0.9, paced_took
        assert caught_up < paced_took
    finally:
        engine.stop()


# --- the streaming state is as wide as the live slots need ----------------------------------------


async def test_a_large_batch_steps_only_the_rows_its_live_slots_need(demo_checkpoint: Path) -> None:
    """64 slots, one live: each step runs 8 rows, not 64 (set_exec_mask saves no compute)."""
    engine = make_engine(demo_checkpoint, batch_size=64)
    try:
        assert engine.resize_step == 8 and engine.stats.rows == 8
        slot = engine.acquire(asyncio.get_running_loop())
        assert slot is not None
        for frame in speech_like(8, 4):
            slot.push(frame)
        await collect(slot, 3)
        assert engine.stats.rows_stepped == 8 and engine.stats.resizes == 0
    finally:
        engine.stop()


async def test_slots_are_taken_lowest_first_and_the_state_follows_the_live_count(demo_checkpoint: Path) -> None:
    engine = make_engine(demo_checkpoint, batch_size=64)
    try:
        loop = asyncio.get_running_loop()
        slots = [engine.acquire(loop) for _ in range(12)]
        assert [slot.index for slot in slots] == list(range(12))
        for slot in slots:
            slot.push(speech_like(9, 1)[0])
        for slot in slots:
            await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        assert engine.stats.rows == 16 and engine.stats.rows_stepped == 16, "12 live slots fit in 16 rows"
        for slot in slots[:9]:
            slot.release()
        again = engine.acquire(loop)
        assert again is not None and again.index == 0, "a new session takes the lowest free slot"
        slots[11].push(speech_like(10, 1)[0])
        await asyncio.wait_for(slots[11].outbox.get(), TIMEOUT)
        assert engine.stats.rows == 8 and engine.stats.rows_stepped == 8, "4 live slots: back to 8 rows"
        assert sorted(engine.layout.rows.values()) == [0, 1, 2, 3], "the live rows are compacted"
    finally:
        engine.stop()


async def test_a_slot_hears_only_its_own_audio_across_resizes(demo_checkpoint: Path) -> None:
    """Sessions arriving and leaving move a running slot's row, never its state or its output."""
    engine = make_engine(demo_checkpoint, batch_size=64)
    try:
        loop = asyncio.get_running_loop()
        steady = engine.acquire(loop)
        assert steady is not None
        frames = speech_like(11, 24)
        for frame in frames[:8]:
            steady.push(frame)
        outputs = await collect(steady, 7)
        crowd = [engine.acquire(loop) for _ in range(10)]  # 11 live: the state grows to 16 rows
        crowd_frames = [speech_like(200 + n, 8) for n in range(len(crowd))]
        for step, frame in enumerate(frames[8:16]):
            steady.push(frame)
            for slot, own in zip(crowd, crowd_frames, strict=True):
                slot.push(own[step])
        outputs += await collect(steady, 8)
        crowd_outputs = [await collect(slot, 7) for slot in crowd]
        assert engine.stats.rows == 16
        restarted = engine.acquire(loop)  # another newcomer restarts a row of the grown state
        for slot in crowd:
            slot.release()  # 2 live: the state shrinks back to 8 rows, with steady's row moved
        for frame in frames[16:]:
            steady.push(frame)
        for frame in crowd_frames[3]:
            restarted.push(frame)
        outputs += await collect(steady, 8)
        restarted_outputs = await collect(restarted, 7)
        assert engine.stats.rows == 8 and engine.stats.resizes >= 2
    finally:
        engine.stop()
    assert_same(outputs, await run_alone(demo_checkpoint, frames, batch_size=64))
    assert_same(crowd_outputs[3], await run_alone(demo_checkpoint, crowd_frames[3], batch_size=64))
    assert_same(restarted_outputs, crowd_outputs[3])
