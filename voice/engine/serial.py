"""The seed's design, kept as a baseline for the benchmark: one session stepped at a time.

Each session gets a batch-1 engine of its own (a private copy of the demo-sized model) and every
step takes one process-wide lock, as the seed's single asyncio.Lock around process_audio did.
Selected with REALTIME_ENGINE=serial; the batched engine is what the server runs by default.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from dataclasses import replace

from .batched import BatchedEngine
from .checkpoint import LoadedModel
from .slots import Slot


class SerialPool:
    """As many batch-1 engines as sessions, stepping under one shared lock."""

    def __init__(self, model: LoadedModel, *, sessions: int, **engine_options: object) -> None:
        lock = threading.Lock()
        # Copy before any engine starts streaming: a copy would carry the original's state along.
        models = [self._copy(model, index) for index in range(sessions)]
        self.engines = [
            BatchedEngine(copy_, batch_size=1, step_lock=lock, **engine_options)  # type: ignore[arg-type]
            for copy_ in models
        ]
        self.model = model
        self.batch_size = sessions

    @staticmethod
    def _copy(model: LoadedModel, index: int) -> LoadedModel:
        """Each engine needs its own modules: moshi keeps a streaming state inside them."""
        if index == 0:
            return model
        return replace(model, mimi=copy.deepcopy(model.mimi), lm=copy.deepcopy(model.lm))

    @property
    def slots(self) -> list[Slot | None]:
        return [slot for engine in self.engines for slot in engine.slots]

    @property
    def slots_in_use(self) -> int:
        return sum(engine.slots_in_use for engine in self.engines)

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()

    def acquire(self, loop: asyncio.AbstractEventLoop) -> Slot | None:
        for engine in self.engines:
            slot = engine.acquire(loop)
            if slot is not None:
                return slot
        return None
