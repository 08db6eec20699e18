"""Forced speech: a slot says a given text in the model's own voice, and no other slot changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import sentencepiece

from voice.engine.batched import BatchedEngine
from voice.engine.forcing import EPAD, MAX_TEXTS, PAD, ForcedSpeech, Piece, pieces_of
from voice.engine.slots import FrameOutput, Slot

from .conftest import TIMEOUT
from .test_engine import assert_same, collect, make_engine, run_alone, speech_like

TEXT = "Hello there. I would like to book a table for two people at seven thirty."


@pytest.fixture
def engine(demo_checkpoint: Path):
    engine = make_engine(demo_checkpoint)
    yield engine
    engine.stop()


async def spoken(slot: Slot, frames: list[np.ndarray] | None = None) -> tuple[str, list[FrameOutput]]:
    """Step the slot (on its frames, then on silence) until its forced text is out; that text."""
    outputs: list[FrameOutput] = []
    for frame in frames or []:
        slot.push(frame)
    slot.set_keep_running(True)
    while True:
        item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        assert isinstance(item, FrameOutput), item
        outputs.append(item)
        if len(outputs) > 4 and item.forced_left == 0:
            slot.set_keep_running(False)
            return "".join(o.text for o in outputs if o.forced and o.text is not None), outputs
        assert len(outputs) < 600, "the forced text never finished"


def test_pieces_join_back_into_the_text_exactly(demo_checkpoint: Path) -> None:
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(demo_checkpoint / "tokenizer.model"))
    for text in (TEXT, "  two  spaces, ünïcödé ✓ and 42!", "x"):
        pieces = pieces_of(tokenizer, text)
        assert "".join(piece.surface for piece in pieces) == text
        assert all(isinstance(piece.token, int) for piece in pieces)


def test_the_pacing_keeps_the_models_pauses_and_starts_a_silent_slot() -> None:
    speech = ForcedSpeech(max_pause=2, delay=1)
    speech.add([Piece(10, "Hi", True), Piece(11, " the", True), Piece(12, "re", False)])
    steps = []
    # (what the model sampled, whether it is a word piece) per step: a silent model, a pause of its
    # own, a word of its own, then silence again.
    for sampled, is_word in [(PAD, False), (PAD, False), (PAD, False), (25, True), (PAD, False), (PAD, False)]:
        chosen = speech.choose(sampled, is_word)
        steps.append((chosen, speech.output()))
    assert steps == [
        (EPAD, (False, None)),  # a silent slot: its pause is cut short with an EPAD...
        (10, (False, None)),  # ...and the first piece follows it
        (None, (True, "Hi")),  # its own pause is kept; "Hi" comes out one step later (the delay)
        (11, (False, None)),  # a word it sampled is replaced by the next piece
        (12, (True, " the")),  # the rest of a word follows at once
        (None, (True, "re")),  # nothing left to say: what it samples stays
    ]
    assert speech.left == 0


async def test_a_slot_says_the_given_text_verbatim(engine: BatchedEngine) -> None:
    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    assert slot.speak(TEXT)
    said, outputs = await spoken(slot, speech_like(5, 3))
    assert said == TEXT
    assert all(o.pcm is not None for o in outputs[1:])  # it speaks (audio every frame) while it says it
    # The last piece comes out with nothing left; every frame before it still had text to say.
    assert outputs[-1].forced and all(o.forced_left > 0 for o in outputs[:-1])


async def test_hush_drops_what_is_not_said_yet(engine: BatchedEngine) -> None:
    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    slot.speak(TEXT)
    slot.set_keep_running(True)
    first = [await asyncio.wait_for(slot.outbox.get(), TIMEOUT) for _ in range(3)]
    assert all(isinstance(o, FrameOutput) and o.forced_left > 0 for o in first)
    slot.hush()
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        assert isinstance(item, FrameOutput)
        if item.forced_left == 0:
            break
        assert asyncio.get_running_loop().time() < deadline
    slot.set_keep_running(False)


async def test_forcing_one_slot_leaves_the_others_tokens_unchanged(
    engine: BatchedEngine, demo_checkpoint: Path
) -> None:
    loop = asyncio.get_running_loop()
    forced, other = engine.acquire(loop), engine.acquire(loop)
    assert forced is not None and other is not None
    frames = speech_like(7, 14)
    forced.speak(TEXT)
    for index, frame in enumerate(frames):
        other.push(frame)
        forced.push(speech_like(200 + index, 1)[0])
    together = await collect(other, 13)
    assert_same(together, await run_alone(demo_checkpoint, frames))
    forced_outputs = await collect(forced, 13)
    assert any(o.forced for o in forced_outputs)


async def test_texts_waiting_to_be_said_are_bounded(engine: BatchedEngine) -> None:
    slot = engine.acquire(asyncio.get_running_loop())
    assert slot is not None
    slot.set_keep_running(True)
    accepted = [slot.speak(f"Text number {n}.") for n in range(MAX_TEXTS + 4)]
    # The engine takes a text only when the one before is said: at most one more than the inbox holds.
    assert MAX_TEXTS <= sum(accepted) <= MAX_TEXTS + 1 and not accepted[-1]
    slot.hush()
    slot.set_keep_running(False)
