"""A session's side of the engine: its slot, the frames it queues and the outputs it gets back.

The event loop only ever touches these: it appends client frames to a slot's bounded inbox and
reads FrameOutputs from its bounded outbox; the inference thread (voice/engine/batched.py) takes
frames through the slot's methods and hands outputs back with call_soon_threadsafe. A slot knows
its engine only through two callables, `wake` (a frame is ready) and `release`: it never holds
the engine's lock, and the engine never reads the slot's inbox directly.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .forcing import SpeechInbox

FRAME_SAMPLES = 1920
OUTBOX_FRAMES = 64


@dataclass
class FrameOutput:
    """What one tick produced for a slot.

    ``text`` is the model's text piece (None for padding), ``pcm`` its 1920 float32 samples (None
    while a restarted slot's output is not generated yet). ``speech`` holds the VAD's speech
    probability per 32 ms window of the input frame, and ``client_audio`` says whether that frame
    was the client's audio or silence the server fed to let the model finish speaking.
    """

    text: str | None
    pcm: np.ndarray | None
    speech: list[float]
    client_audio: bool
    latency_s: float  # client frame queued -> model output ready
    heard: np.ndarray | None = None  # the input frame the model stepped on (for recordings)
    ready_at: float = 0.0  # time.perf_counter() when the output was ready
    forced: bool = False  # ``text`` is the next piece of a text the slot was asked to say (speak)
    forced_left: int = 0  # pieces of such text not yet out of the model


@dataclass
class EngineFailure:
    """A step failed (the session goes on), or with ``fatal`` the engine itself is gone (it ends)."""

    message: str
    fatal: bool = False


class Slot:
    """A session's place in the batch. The event loop writes frames in and reads outputs here.

    Its own lock guards the inbox and ``keep_running``; it is only ever held briefly and never
    while calling ``wake``, so the engine may take it while holding its own lock.
    """

    def __init__(
        self,
        index: int,
        loop: asyncio.AbstractEventLoop,
        inbox_frames: int,
        *,
        wake: Callable[[], None],
        release: Callable[[Slot], None],
    ) -> None:
        self.index = index
        self.loop = loop
        self.inbox_frames = inbox_frames
        self._wake = wake
        self._release = release
        self._lock = threading.Lock()
        self._inbox: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self.outbox = Outbox(OUTBOX_FRAMES)
        self._keep_running = False  # set while a response is open: step on silence when no audio came
        self.fresh = True  # the next frame is the slot's first after a restart (inference thread only)
        self.released = False
        self.dropped_outputs = 0
        # Paced: stepped on the tick only, never in the catch-up steps that let a slot with a
        # backlog (a stall, a client's burst) recover. A Live session's output must never run ahead
        # of real time, even when its client flushes seconds of queued input at once.
        self.paced = False
        # Run the VAD on this slot's audio: only turn detection needs it, and at ~1 ms per frame
        # per session on a CPU core it would cost a batch of 32 sessions a third of its tick.
        self.detect_speech = True
        self.done = 0  # client frames taken for a step (inference thread; read by the engine service)
        self.speech = SpeechInbox()  # texts to say in the model's voice (see forcing.py)

    # --- the event loop's side ----------------------------------------------------------------

    def push(self, frame: np.ndarray) -> bool:
        """Queue one input frame; False when the inbox is full (the client sends faster than real time)."""
        with self._lock:
            if len(self._inbox) >= self.inbox_frames:
                return False
            self._inbox.append((frame, time.perf_counter()))
        self._wake()
        return True

    @property
    def queued_frames(self) -> int:
        return len(self._inbox)

    def set_keep_running(self, value: bool) -> None:
        with self._lock:
            changed = value and not self._keep_running
            self._keep_running = value
        if changed:
            self._wake()

    def speak(self, text: str) -> bool:
        """Say ``text`` in the model's own voice, after what it was already asked to say; False when
        too many texts wait."""
        return self.speech.say(text)

    def hush(self) -> None:
        """Drop what it was asked to say and has not said yet."""
        self.speech.hush()

    def set_detect_speech(self, value: bool) -> None:
        self.detect_speech = value

    def release(self) -> None:
        self._release(self)

    def count_refused(self) -> None:
        """A frame the inbox had no room for counts as done: the engine service's sender tells the
        worker how many frames are done, and it must not wait for this one."""
        with self._lock:
            self.done += 1

    # --- the inference thread's side ----------------------------------------------------------

    def wants_step(self, on_tick: bool) -> bool:
        """Has a frame queued, or must keep talking, and the tick has come (or it may catch up)."""
        if self.paced and not on_tick:
            return False
        with self._lock:
            return bool(self._inbox) or (self._keep_running and on_tick)

    @property
    def behind(self) -> bool:
        """Has a backlog the engine should catch up on at once (never for a paced slot)."""
        return not self.paced and len(self._inbox) > 1

    def waiting(self) -> bool:
        """Has a frame queued or a response open: the engine must wake for it by the next tick."""
        with self._lock:
            return bool(self._inbox) or self._keep_running

    def stop_running(self) -> None:
        """The slot was released: no more silence is fed to it."""
        with self._lock:
            self._keep_running = False

    def take(self, feed_silence: bool) -> tuple[np.ndarray, float, bool] | None:
        """The next frame, when it was queued, and whether it is the client's audio."""
        with self._lock:
            if self._inbox:
                frame, queued_at = self._inbox.popleft()
                self.done += 1
                return frame, queued_at, True
            if self._keep_running and feed_silence:
                return np.zeros(FRAME_SAMPLES, dtype=np.float32), time.perf_counter(), False
        return None

    def deliver_threadsafe(self, item: FrameOutput | EngineFailure) -> None:
        """Hand an output to the slot's event loop from the inference thread."""
        try:
            self.loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the session's loop has closed; it can no longer take output
            self._release(self)

    # Called on the event loop (via call_soon_threadsafe).
    def _deliver(self, item: FrameOutput | EngineFailure) -> None:
        if self.released:
            return
        if self.outbox.put_dropping_oldest(item):
            self.dropped_outputs += 1


class Outbox:
    """A slot's bounded output queue, read by the session's sender on the event loop.

    A client that reads more slowly than the model speaks must not grow memory, so when it is full
    the oldest frame's audio and text go. Its VAD scores do not: they move on to the next frame,
    because turn detection counts time in scored windows and would fall behind without them.
    """

    def __init__(self, size: int) -> None:
        self._items: collections.deque[FrameOutput | EngineFailure] = collections.deque()
        self._size = size
        self._ready = asyncio.Event()

    def put_dropping_oldest(self, item: FrameOutput | EngineFailure) -> bool:
        """Queue an item; True when the oldest one had to make room for it."""
        dropped = False
        if len(self._items) >= self._size:
            oldest = self._items.popleft()
            dropped = True
            if isinstance(oldest, FrameOutput) and oldest.speech:
                heir = next((i for i in (*self._items, item) if isinstance(i, FrameOutput) and i.client_audio), None)
                if heir is not None:
                    heir.speech = oldest.speech + heir.speech
        self._items.append(item)
        self._ready.set()
        return dropped

    async def get(self) -> FrameOutput | EngineFailure:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)
