"""One model, many sessions: a fixed set of slots stepped together on an inference thread.

Moshi's streaming state has a batch dimension. Each live session owns one slot, and each slot one
*row* of that state; every tick the thread takes one frame from each slot that has one ready (or
that must keep talking), runs one batched Mimi encode -> LMGen step -> Mimi decode, and hands each
slot its own text and audio back on the event loop. Rows without input are skipped with
``set_exec_mask``; a new session restarts only its own row with ``reset_streaming(mask)``. LMGen
runs with ``support_out_of_sync=True`` so a restart does not stall the other slots (see
docs/architecture.md); a restarted slot's first outputs carry the ungenerated token id and are
skipped for that slot alone.

**A step costs what the live sessions cost.** ``set_exec_mask`` skips state updates, not compute,
so a state as wide as ``batch_size`` (REALTIME_MAX_SESSIONS) would cost the whole batch however few
sessions are live. So the state is only as wide as the live sessions need: its row count is the
live count rounded up to ``resize_step`` rows (see rows.py, ``StreamingRows``). When a new
session finds no free row, or the live count falls well below the width, the engine builds a
streaming state of the new width (``streaming_forever`` on fresh states) and copies the live rows
into it, compacted (state_rows.copy_rows): a slot's row moves, its state does not change, so its tokens
are those it would get alone. One batched step per tick, never one per group: on this CPU a step
has a fixed cost (~22 ms on the demo checkpoint) that grouping would pay once per group.

Model work never runs on the event loop: the loop only appends to a slot's bounded inbox and reads
results from its bounded outbox.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from moshi.models import LMGen
from moshi.utils.compile import no_compile

from .checkpoint import LoadedModel
from .forcing import ForcedSpeech, pieces_of
from .rows import StreamingRows
from .slots import FRAME_SAMPLES, EngineFailure, FrameOutput, Slot
from .vad import SpeechDetector

log = logging.getLogger(__name__)

TEXT_PADDING_IDS = (0, 3)
# Upper bounds (seconds) of the step-time histogram, around one 80 ms frame.
STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
# The streaming state grows and shrinks in steps of this many rows (on the CPU; see BatchedEngine).
RESIZE_STEP = 8


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
    prep_s: float = 0.0  # restarting rows and resizing the state before the step


@dataclass
class EngineStats:
    steps: int = 0
    last_step_s: float = 0.0
    rows: int = 0  # the streaming state's current width (rows stepped per tick)
    rows_stepped: int = 0  # the width of the last step
    resizes: int = 0  # how many times the state was rebuilt at another width
    step_seconds: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=1000))
    step_seconds_sum: float = 0.0
    # Steps per bucket: STEP_BUCKETS' upper bounds, then +Inf. /metrics' histogram, kept here so
    # that a web worker can show the steps of an engine that runs in another process.
    step_buckets: list[int] = field(default_factory=lambda: [0] * (len(STEP_BUCKETS) + 1))

    def record(self, seconds: float) -> None:
        self.steps += 1
        self.last_step_s = seconds
        self.step_seconds.append(seconds)
        self.step_seconds_sum += seconds
        self.step_buckets[bisect.bisect_left(STEP_BUCKETS, seconds)] += 1


class BatchedEngine:
    """The batched streaming state of one loaded model and the thread that steps it.

    ``batch_size`` is the number of slots (sessions); the streaming state has ``layout.rows_for(live)``
    rows, a multiple of ``resize_step`` at most ``batch_size``. ``resize_step=None`` picks
    ``RESIZE_STEP`` on the CPU and a fixed full-width state (``batch_size``) on CUDA, as before:

    - on a GPU a step's cost hardly depends on the batch at these sizes, and a fixed shape is what
      torch.compile and CUDA graphs want. Moshi's CUDA graphs (``CUDAGraphed``) live in the
      streaming state objects (LMGen's ``graphed_main``/``graphed_depth``, Mimi's encoder and
      decoder, each root state's exec-mask graph) and capture the addresses of that state's
      tensors. A resize builds new states, hence new graphs, captured again on their second call;
      rows are copied in place (``copy_``/``index_copy``) into tensors no graph has captured yet,
      so resizing is correct with graphs on, only slower for the steps after a resize (and with
      ``compile=True`` each width compiles once). That reasoning is not yet checked on a GPU:
      pass ``resize_step`` explicitly to resize there too.
    - LMGen with classifier-free guidance (``cfg_coef != 1``) doubles the LM's batch; resizing
      is not done then (the state stays ``batch_size`` wide).
    """

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
        step_lock: threading.Lock | None = None,
        resize_step: int | None = None,
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
        # Shared by the engines of a SerialPool: one session stepped at a time (the seed's design).
        self.step_lock = step_lock or contextlib.nullcontext()
        self._stop = False
        torch.manual_seed(seed)
        lm_gen_config = {**model.info.lm_gen_config, **(lm_gen_overrides or {})}
        self.lm_gen = LMGen(model.lm, support_out_of_sync=True, on_text_hook=self._force_text, **lm_gen_config)
        # Each slot's forced speech (inference thread), and the rows forcing in the current step.
        self._speech = [ForcedSpeech(delay=self.lm_gen.max_delay) for _ in range(batch_size)]
        self._forcing: dict[int, ForcedSpeech] = {}
        if resize_step is None:
            resize_step = batch_size if self.device.type == "cuda" else RESIZE_STEP
        if self.lm_gen.cfg_coef != 1.0:
            resize_step = batch_size
        self.resize_step = max(1, min(resize_step, batch_size))
        # Inference thread only (and warm-up before it starts): each live slot's row in the state.
        self.layout = StreamingRows(
            model, self.lm_gen, batch_size=batch_size, resize_step=self.resize_step, device=self.device
        )
        self.stats.rows = self.layout.width
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
            everyone = torch.ones(self.layout.width, dtype=torch.bool)
            for _ in range(frames):
                self._step_rows(torch.zeros(self.layout.width, 1, FRAME_SAMPLES), everyone, everyone)
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
        log.info(
            "warm-up of %s (%d slots, %d rows) took %.1fs",
            self.model.name,
            self.batch_size,
            self.layout.width,
            time.perf_counter() - started,
        )

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
                        index: self._vads[index].process(frame)
                        if batch.client_audio[index] and batch.owners[index].detect_speech
                        else []
                        for index, frame in batch.frames.items()
                    }
                    with self.step_lock:
                        # The model's work alone (row restarts and resizes included): not the VAD,
                        # not the lock wait.
                        started = time.perf_counter()
                        try:
                            outputs = self._step(batch.inputs, batch.exec_mask, batch.fresh_mask)
                        finally:
                            self.stats.record(time.perf_counter() - started + batch.prep_s)
                except Exception as exc:  # noqa: BLE001 - one failed step must not kill every session
                    log.exception("model step failed")
                    for slot in batch.owners.values():
                        slot.deliver_threadsafe(EngineFailure(f"model step failed: {exc}"))
                    continue
                done = time.perf_counter()
                for index, slot in batch.owners.items():
                    text, pcm, forced, forced_left = outputs.get(index, (None, None, False, self._speech[index].left))
                    slot.deliver_threadsafe(
                        FrameOutput(
                            text=text,
                            pcm=pcm,
                            forced=forced,
                            forced_left=forced_left,
                            speech=speech[index],
                            client_audio=batch.client_audio[index],
                            latency_s=done - batch.enqueued[index],
                            ready_at=done,
                            heard=batch.frames[index],
                        )
                    )
                if batch.on_tick:
                    next_tick = max(next_tick + self.tick_s, done - self.tick_s)

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
            resets = set(torch.nonzero(self._pending_reset).flatten().tolist())
            self._pending_reset[:] = False
            live = {index for index, slot in enumerate(self.slots) if slot is not None}
        started = time.perf_counter()
        self.layout.arrange(live, resets)
        self.stats.rows, self.stats.resizes = self.layout.width, self.layout.resizes
        batch.prep_s = time.perf_counter() - started
        for index in resets:
            self._vads[index].reset()
            self._speech[index] = ForcedSpeech(delay=self.lm_gen.max_delay)
        for index, slot in batch.owners.items():
            speech = self._speech[index]
            hushed, text = slot.speech.take(next_text=not speech.queue)
            if hushed:
                speech.hush()
            if text is not None:
                speech.add(pieces_of(self.model.tokenizer, text))
        return batch

    def _step(
        self, inputs: torch.Tensor, exec_mask: torch.Tensor, fresh_mask: torch.Tensor
    ) -> dict[int, tuple[str | None, np.ndarray, bool, int]]:
        """One batched step for the slots in ``exec_mask`` (all indexed by slot); their valid output."""
        rows = torch.zeros(self.layout.width, 1, FRAME_SAMPLES)
        row_exec = torch.zeros(self.layout.width, dtype=torch.bool)
        row_fresh = torch.zeros(self.layout.width, dtype=torch.bool)
        stepped = {}
        for index, row in self.layout.rows.items():
            if exec_mask[index]:
                rows[row] = inputs[index]
                row_exec[row] = True
                row_fresh[row] = fresh_mask[index]
                stepped[row] = index
        if not stepped:
            return {}
        self._forcing = {row: self._speech[index] for row, index in stepped.items() if self._speech[index].left}
        try:
            outputs = self._step_rows(rows, row_exec, row_fresh)
        finally:
            forcing, self._forcing = self._forcing, {}
        results = {}
        for row, (text, pcm, forced, left) in outputs.items():
            speech = forcing.get(row)
            if speech is not None:
                forced, surface = speech.output()
                text, left = (surface if forced else None), speech.left
            results[stepped[row]] = (text, pcm, forced, left)
        return results

    def _force_text(self, text_token: torch.Tensor) -> None:
        """LMGen's on_text_hook: put each forcing row's next piece in place of what it sampled."""
        if not self._forcing:
            return
        sampled = text_token.tolist()
        for row, speech in self._forcing.items():
            token = sampled[row]
            is_word = token not in TEXT_PADDING_IDS and not self.model.tokenizer.is_control(token)
            forced = speech.choose(token, is_word)
            if forced is not None:
                text_token[row] = forced

    def _step_rows(
        self, inputs: torch.Tensor, exec_mask: torch.Tensor, fresh_mask: torch.Tensor
    ) -> dict[int, tuple[str | None, np.ndarray, bool, int]]:
        """One batched encode -> LM step -> decode over the state's rows; each executed row's valid output."""
        mimi, lm_gen = self.model.mimi, self.lm_gen
        self.stats.rows_stepped = inputs.shape[0]
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
        results: dict[int, tuple[str | None, np.ndarray, bool, int]] = {}
        for index in torch.nonzero(valid.cpu()).flatten().tolist():
            text_id = text_ids[index]
            text = None
            if text_id not in TEXT_PADDING_IDS and not self.model.tokenizer.is_control(text_id):
                text = self.model.tokenizer.id_to_piece(text_id).replace("\u2581", " ")
            results[index] = (text, pcm[index, 0].copy(), False, 0)
        return results
