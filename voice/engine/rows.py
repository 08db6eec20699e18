"""Rows: which row of a model's batched streaming state each live slot has, and how wide it is.

Moshi's streaming state has a batch dimension, and ``set_exec_mask`` skips state updates, not
compute: a state as wide as every slot would cost a step of the whole batch however few sessions
are live. So the state is only as wide as the live slots need (``rows_for``); when a new slot finds
no free row, or the live count falls well below the width, a state of the new width is built and
the live rows are copied into it, compacted (state_rows.copy_rows). A slot's row moves, its state
does not change: its tokens are the ones it would get alone (tests/test_engine.py).

The inference thread (batched.py) is the only user: ``arrange`` before each step, ``rows`` and
``width`` to lay the step out.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .state_rows import check_resizable, copy_rows

log = logging.getLogger(__name__)


class StreamingRows:
    def __init__(self, model: Any, lm_gen: Any, *, batch_size: int, resize_step: int, device: torch.device) -> None:
        self.model = model
        self.lm_gen = lm_gen
        self.batch_size = batch_size
        self.resize_step = resize_step
        self.device = device
        self.rows: dict[int, int] = {}  # slot index -> its row
        self.width = 0
        self.resizes = 0
        self.resize(self.rows_for(0), {})
        self.resizes = 0

    def rows_for(self, live: int) -> int:
        """The state's width for ``live`` slots: whole steps of ``resize_step`` rows, at least one.

        It grows as soon as a slot finds no free row and shrinks only when half a step more would
        still fit in a narrower state: with steps of 8 it grows to 16 rows at the 9th live slot and
        back to 8 when 4 are left, so a session coming and going at a step's edge does not resize
        it each time.
        """
        step = self.resize_step
        return max(1, min(self.batch_size, max(step, -(-live // step) * step)))

    def arrange(self, live: set[int], resets: set[int]) -> None:
        """Give each live slot a row: keep the rows of running slots, restart the new ones' rows.

        Resizes the state when the live slots no longer fit, or would fit in a narrower one.
        """
        keep = {index: row for index, row in self.rows.items() if index in live and index not in resets}
        newcomers = sorted(index for index in live if index not in keep)
        count = len(keep) + len(newcomers)
        if count > self.width or self.rows_for(count + self.resize_step // 2) < self.width:
            self.resize(self.rows_for(count), keep)  # the new state's free rows are fresh
            rows = dict(self.rows)
            for index, row in zip(newcomers, range(len(rows), self.width), strict=False):
                rows[index] = row
            self.rows = rows
            return
        taken = set(keep.values())
        free = (row for row in range(self.width) if row not in taken)
        restart = torch.zeros(self.width, dtype=torch.bool)
        for index in newcomers:
            keep[index] = next(free)
            restart[keep[index]] = True
        self.rows = keep
        if restart.any():
            self.model.mimi.reset_streaming(restart.to(self.device))
            self.lm_gen.reset_streaming(restart.to(self.device))

    def _modules(self) -> tuple:
        # LMGen's language model is streaming-detached: its state (the KV caches) is not part of
        # LMGen's own and must be carried along with it.
        return (self.model.mimi, self.lm_gen, self.model.lm)

    def resize(self, width: int, keep: dict[int, int]) -> None:
        """Rebuild the streaming state ``width`` rows wide; ``keep``'s slots get rows 0.., in order."""
        modules = self._modules()
        old = [module.get_streaming_state() for module in modules] if self.width else None
        if old is not None:
            for module, states in zip(modules, old, strict=True):
                module.set_streaming_state(dict.fromkeys(states))  # detached, not exited: kept in `old`
        self.model.mimi.streaming_forever(width)
        self.lm_gen.streaming_forever(width)  # enters the LM's streaming too
        new = [module.get_streaming_state() for module in modules]
        order = sorted(keep)
        if old is not None and order:
            source = torch.tensor([keep[index] for index in order], device=self.device)
            target = torch.arange(len(order), device=self.device)
            for old_states, new_states in zip(old, new, strict=True):
                for name, state in new_states.items():
                    copy_rows(old_states[name], state, source, target)
        else:
            for states in new:
                for state in states.values():
                    check_resizable(state)
        self.rows = {index: row for row, index in enumerate(order)}
        self.width = width
        self.resizes += 1
        log.debug("%s: streaming state resized to %d rows (%d kept)", self.model.name, width, len(order))
