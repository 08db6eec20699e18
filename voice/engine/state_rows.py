"""Copying moshi streaming states row by row: how the engine resizes its state (batched.py).

A streaming state is a dataclass per module holding tensors whose first dimension is the batch,
moshi's ring KV caches (batch second), and batch-wide values (counters, CUDA graphs). Resizing the
batch means building fresh states at the new width and copying each live row across; anything
this module does not know how to copy is refused, so a newer moshi with a new kind of field fails
loudly instead of corrupting a session's state.
"""

from __future__ import annotations

import contextlib

import torch
from moshi.modules.streaming import State
from moshi.modules.transformer import RingKVCache
from moshi.utils.compile import CUDAGraphed

# What a streaming state may hold besides tensors with the batch first: copied as they are (batch-wide
# counters such as offset_cpu only matter to per-step weights, which the streaming models here
# do not use outside the depth transformer, whose state lives for one step) or rebuilt with it.
_BATCH_WIDE = (int, float, bool, str, torch.device, type(None), CUDAGraphed, contextlib.ExitStack)


def check_resizable(state: State) -> None:
    """Refuse a state this engine does not know how to copy row by row (a newer moshi's)."""
    for name, value in vars(state).items():
        if not (torch.is_tensor(value) or isinstance(value, (*_BATCH_WIDE, RingKVCache)) or callable(value)):
            raise TypeError(f"cannot resize {type(state).__name__}: unknown field {name} ({type(value).__name__})")


def copy_rows(old: State, new: State, source: torch.Tensor, target: torch.Tensor) -> None:
    """Copy rows ``source`` of one moshi streaming state into rows ``target`` of another, in place.

    Tensors whose first dimension is the batch in both states are copied row by row; the KV
    cache's batch is its second dimension. Anything else (per-model constants such as LMGen's
    ``initial``, CUDA graphs, callbacks) belongs to the new state already.
    """
    if type(old) is not type(new):
        raise TypeError(f"cannot copy {type(old).__name__} rows into {type(new).__name__}")
    check_resizable(old)
    for name, value in vars(old).items():
        fresh = getattr(new, name)
        if isinstance(value, RingKVCache):
            fresh.cache.index_copy_(1, target, value.cache.index_select(1, source))
            if value.respect_exec_mask:
                fresh.end_offset.index_copy_(0, target, value.end_offset.index_select(0, source))
            else:  # one offset for the whole batch (moshi's caches that ignore the exec mask)
                fresh.end_offset.copy_(value.end_offset)
        elif torch.is_tensor(value):
            if value.dim() and value.shape[0] == old.batch_size and fresh.shape[0] == new.batch_size:
                fresh.index_copy_(0, target, value.index_select(0, source))
        elif name == "offset_cpu":
            setattr(new, name, value)
