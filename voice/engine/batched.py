"""One model, many sessions: a fixed set of slots stepped together on an inference thread.

Moshi's streaming state has a batch dimension. Each live session owns one slot of it; every tick
the thread takes one frame from each slot that has one ready (or that must keep talking), runs one
batched Mimi encode -> LMGen step -> Mimi decode, and hands each slot its own text and audio back
on the event loop. Slots without input are skipped with ``set_exec_mask``; a new session restarts
only its own slot with ``reset_streaming(mask)``. LMGen runs with ``support_out_of_sync=True`` so a
restart does not stall the other slots (see docs/architecture.md); a restarted slot's first outputs carry the
ungenerated token id and are skipped for that slot alone.

Model work never runs on the event loop: the loop only appends to a slot's bounded inbox and reads
results from its bounded outbox.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from moshi.models import LMGen
from moshi.utils.compile import no_compile

from .checkpoint import LoadedModel
from .slots import FRAME_SAMPLES, EngineFailure, FrameOutput, Slot
from .vad import SpeechDetector

log = logging.getLogger(__name__)

TEXT_PADDING_IDS = (0, 3)


@dataclass
class _Batch:
    """The frames taken for one step, indexed by slot."""

    on_tick: bool  # a scheduled tick (False: a catch-up step for slots that fell behind)
    inputs: torch.Tensor
    exec_mask: torch.Tensor
    fresh_mask: torch.Tensor
    owners: dict[int, Slot]
    frames: dict[int, np.ndarray]
    client_audio: dict[int, bool]
    enqueued: dict[int, float]


@dataclass
class EngineStats:
    steps: int = 0
    last_step_s: float = 0.0
    step_seconds: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=1000))


class BatchedEngine:
    """The batched streaming state of one loaded model and the thread that steps it."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        batch_size: int,
        tick_s: float,
        inbox_frames: int,
        compile: bool,
        seed: int = 0,
        lm_gen_overrides: dict | None = None,
        on_step: Callable[[float], None] | None = None,
        step_lock: threading.Lock | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.tick_s = tick_s
        self.inbox_frames = inbox_frames
        self.compile = compile
        self.device = next(model.lm.parameters()).device
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.slots: list[Slot | None] = [None] * batch_size
        self._vads = [SpeechDetector() for _ in range(batch_size)]
        self._pending_reset = torch.zeros(batch_size, dtype=torch.bool)
        self.stats = EngineStats()
        self.on_step = on_step  # told each step's duration (metrics); runs on the inference thread
        # Shared by the engines of a SerialPool: one session stepped at a time (the seed's design).
        self.step_lock = step_lock or contextlib.nullcontext()
        self._stop = False
        torch.manual_seed(seed)
        lm_gen_config = {**model.info.lm_gen_config, **(lm_gen_overrides or {})}
        self.lm_gen = LMGen(model.lm, support_out_of_sync=True, **lm_gen_config)
        self.model.mimi.streaming_forever(batch_size)
        self.lm_gen.streaming_forever(batch_size)
        self._thread = threading.Thread(target=self._run, name=f"moshi-{model.name}", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.warmup()
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stop = True
            self.wake.notify()
        self._thread.join(timeout=5)

    def warmup(self, frames: int = 4) -> None:
        """Run a few batched steps on silence before the first session (compiles kernels on GPU)."""
        started = time.perf_counter()
        with self._compile_context():
            everyone = torch.ones(self.batch_size, dtype=torch.bool)
            for _ in range(frames):
                self._step(torch.zeros(self.batch_size, 1, FRAME_SAMPLES), everyone, everyone)
            self.model.mimi.reset_streaming()
            self.lm_gen.reset_streaming()
            # Each slot's VAD is a TorchScript model whose first calls are slow (~50 ms): pay that
            # now, not as a stall for every session when many callers arrive at once.
            for vad in self._vads:
                for _ in range(2):
                    vad.process(np.zeros(FRAME_SAMPLES, dtype=np.float32))
                vad.reset()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        log.info("warm-up of %s (batch %d) took %.1fs", self.model.name, self.batch_size, time.perf_counter() - started)

    # --- slots --------------------------------------------------------------------------------

    def acquire(self, loop: asyncio.AbstractEventLoop) -> Slot | None:
        """A free slot, restarted for a new session, or None when every slot is taken."""
        with self.lock:
            for index, taken in enumerate(self.slots):
                if taken is None:
                    slot = Slot(index, loop, self.inbox_frames, wake=self._wake, release=self.release)
                    self.slots[index] = slot
                    self._pending_reset[index] = True
                    return slot
        return None

    def release(self, slot: Slot) -> None:
        slot.stop_running()
        with self.lock:
            slot.released = True
            if self.slots[slot.index] is slot:
                self.slots[slot.index] = None

    def _wake(self) -> None:
        """A slot has a frame (or a response) for the inference thread."""
        with self.lock:
            self.wake.notify()

    @property
    def slots_in_use(self) -> int:
        with self.lock:
            return sum(slot is not None for slot in self.slots)

    # --- the inference thread -----------------------------------------------------------------

    def _compile_context(self) -> contextlib.ExitStack:
        """no_grad, plus moshi's no_compile where torch.compile would cost more than it saves (CPU)."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if not self.compile:
            stack.enter_context(no_compile())
        return stack

    def _run(self) -> None:
        with self._compile_context():
            next_tick = time.perf_counter()
            while True:
                batch = self._collect(next_tick)
                if batch is None:
                    return
                try:
                    speech = {
                        index: self._vads[index].process(frame) if batch.client_audio[index] else []
                        for index, frame in batch.frames.items()
                    }
                    with self.step_lock:
                        started = time.perf_counter()  # the model step alone: not the VAD, not the lock wait
                        try:
                            outputs = self._step(batch.inputs, batch.exec_mask, batch.fresh_mask)
                        finally:
                            self._record_step(time.perf_counter() - started)
                except Exception as exc:  # noqa: BLE001 - one failed step must not kill every session
                    log.exception("model step failed")
                    for slot in batch.owners.values():
                        slot.deliver_threadsafe(EngineFailure(f"model step failed: {exc}"))
                    continue
                done = time.perf_counter()
                for index, slot in batch.owners.items():
                    text, pcm = outputs.get(index, (None, None))
                    slot.deliver_threadsafe(
                        FrameOutput(
                            text=text,
                            pcm=pcm,
                            speech=speech[index],
                            client_audio=batch.client_audio[index],
                            latency_s=done - batch.enqueued[index],
                            ready_at=done,
                            heard=batch.frames[index],
                        )
                    )
                if batch.on_tick:
                    next_tick = max(next_tick + self.tick_s, done - self.tick_s)

    def _record_step(self, seconds: float) -> None:
        self.stats.steps += 1
        self.stats.last_step_s = seconds
        self.stats.step_seconds.append(seconds)
        if self.on_step is not None:
            self.on_step(seconds)

    def _collect(self, next_tick: float) -> _Batch | None:
        """Wait for the tick and gather one frame per ready slot; None when stopping.

        A slot with more than one frame waiting has fallen behind (a stall, a burst from the
        client): then the engine steps again at once, without waiting for the tick, on the slots
        that have client audio, until the backlog is gone. Silence for an open response is only
        fed on the tick, in real time.
        """
        with self.lock:
            while True:
                if self._stop:
                    return None
                now = time.perf_counter()
                on_tick = now >= next_tick
                live = [s for s in self.slots if s is not None]
                behind = any(s.behind for s in live)
                ready = [s for s in live if s.wants_step(on_tick)]
                if ready and (on_tick or behind):
                    break
                waiting = any(s.waiting() for s in live)
                self.wake.wait(timeout=max(next_tick - now, 0.0) if waiting else 1.0)
            batch = _Batch(
                on_tick=on_tick,
                inputs=torch.zeros(self.batch_size, 1, FRAME_SAMPLES),
                exec_mask=torch.zeros(self.batch_size, dtype=torch.bool),
                fresh_mask=torch.zeros(self.batch_size, dtype=torch.bool),
                owners={},
                frames={},
                client_audio={},
                enqueued={},
            )
            for slot in ready:
                taken = slot.take(feed_silence=on_tick)
                if taken is None:
                    continue
                index = slot.index
                batch.frames[index], batch.enqueued[index], batch.client_audio[index] = taken
                batch.inputs[index, 0] = torch.from_numpy(batch.frames[index])
                batch.exec_mask[index] = True
                batch.fresh_mask[index] = slot.fresh
                slot.fresh = False
                batch.owners[index] = slot
            resets = self._pending_reset.clone()
            self._pending_reset[:] = False
        if resets.any():
            self.model.mimi.reset_streaming(resets)
            self.lm_gen.reset_streaming(resets)
            for index in torch.nonzero(resets).flatten().tolist():
                self._vads[index].reset()
        return batch

    def _step(
        self, inputs: torch.Tensor, exec_mask: torch.Tensor, fresh_mask: torch.Tensor
    ) -> dict[int, tuple[str | None, np.ndarray]]:
        """One batched encode -> LM step -> decode; returns each executed slot's valid output."""
        mimi, lm_gen = self.model.mimi, self.lm_gen
        device_mask = exec_mask.to(self.device)
        mimi.set_exec_mask(device_mask)
        codes = mimi.encode(inputs.to(self.device))
        if fresh_mask.any():
            # As in moshi's server: a stream's first frame is in the model's past; re-apply the
            # encoder's left padding on the next frame by restarting Mimi for those slots only.
            mimi.reset_streaming(fresh_mask.to(self.device))
        lm_gen.set_exec_mask(device_mask)
        tokens = lm_gen.step(codes)
        if tokens is None:
            return {}
        valid = device_mask & (tokens[:, :, 0] >= 0).all(dim=1)
        if not valid.any():
            return {}
        mimi.set_exec_mask(valid)
        pcm = mimi.decode(tokens[:, 1:].clamp(min=0)).float().cpu().numpy()
        text_ids = tokens[:, 0, 0].cpu().tolist()
        results: dict[int, tuple[str | None, np.ndarray]] = {}
        for index in torch.nonzero(valid.cpu()).flatten().tolist():
            text_id = text_ids[index]
            text = None
            if text_id not in TEXT_PADDING_IDS and not self.model.tokenizer.is_control(text_id):
                text = self.model.tokenizer.id_to_piece(text_id).replace("\u2581", " ")
            results[index] = (text, pcm[index, 0].copy())
        return results
