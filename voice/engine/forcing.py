"""Making one slot say a given text in Moshi's own voice: its inner monologue, forced.

Moshi speaks what its text stream (the "inner monologue") says: each 80 ms it samples a text token
(a word piece, or padding while it is silent or between words), and the depformer then samples the
audio that goes with it. moshi 0.2.13's LMGen calls ``on_text_hook(text_token)`` with the sampled
tokens of the whole batch (shape [B]) before the depformer and the token cache use them, so
overwriting one row's entry in place makes that slot say the forced piece, and leaves every other
row as it was sampled.

The pacing stays the model's. Moshi writes ``PAD PAD … EPAD word`` (EPAD, id 0, ends a pause just
before a word), so for a slot with text to say, each step:

- the model sampled a word piece: replace it with the next forced piece;
- the model sampled EPAD, or the previous step was an EPAD: the next forced piece goes out on the
  next step (a word follows its EPAD), and the pieces of one word follow each other at once;
- the model sampled PAD: keep its pause, unless it has lasted ``max_pause`` steps; then force an
  EPAD, and the next piece after it. A slot that is only listening (all padding) thus starts
  speaking within a few steps.

The output of a step carries the text sampled ``delay`` steps before (LMGen's max_delay), so each
forced piece is logged with the step it was forced at and recognised when it comes out: then the
output's text is the piece's exact span of the given text (so the pieces join back into it
verbatim, even where the tokenizer normalised or did not know a character).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

EPAD = 0  # Moshi's end-of-padding text token
PAD = 3  # Moshi's text padding
MAX_TEXT_CHARS = 4000  # one text to say (a companion answer is a few sentences)
MAX_TEXTS = 16  # texts waiting per slot


@dataclass
class Piece:
    token: int
    surface: str  # this piece's span of the given text, gaps included
    starts_word: bool


def pieces_of(tokenizer: Any, text: str) -> list[Piece]:
    """The text as tokenizer pieces, each with its exact span (the spans join back into ``text``)."""
    proto = tokenizer.encode(text, out_type="immutable_proto")
    spans = [(piece.id, piece.begin, piece.end, piece.piece) for piece in proto.pieces]
    result: list[Piece] = []
    cursor = 0
    for index, (token, _begin, end, piece) in enumerate(spans):
        stop = len(text) if index == len(spans) - 1 else max(end, cursor)
        result.append(Piece(token, text[cursor:stop], piece.startswith("\u2581")))
        cursor = stop
    return [piece for piece in result if piece.surface or piece.token]


class SpeechInbox:
    """Texts a slot was asked to say, written by the event loop, read by the inference thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._texts: collections.deque[str] = collections.deque()
        self._hushed = False

    def say(self, text: str) -> bool:
        """Queue a text; False when too many wait (the caller says so to its client)."""
        with self._lock:
            if len(self._texts) >= MAX_TEXTS:
                return False
            self._texts.append(text[:MAX_TEXT_CHARS])
            return True

    def hush(self) -> None:
        """Drop everything not said yet."""
        with self._lock:
            self._texts.clear()
            self._hushed = True

    def take(self, next_text: bool) -> tuple[bool, str | None]:
        """(hushed since the last take, the next text if ``next_text``).

        The engine takes a text only when the one before is said, so that what waits stays in this
        bounded inbox (``say`` refuses the 17th) and is tokenized only when its turn comes.
        """
        with self._lock:
            hushed, self._hushed = self._hushed, False
            text = self._texts.popleft() if next_text and self._texts else None
        return hushed, text


@dataclass
class ForcedSpeech:
    """One slot's forcing state (inference thread only)."""

    max_pause: int = 3
    delay: int = 1
    queue: collections.deque[Piece] = field(default_factory=collections.deque)
    steps: int = 0  # the slot's executed steps since its restart
    pause: int = 0  # padding steps in a row while it has text to say
    say_next: bool = True  # the next step says a piece (after an EPAD, inside a word, at the start)
    log: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)

    @property
    def left(self) -> int:
        """Forced pieces not yet out of the model: to say, or said and still in its delay."""
        return len(self.queue) + len(self.log)

    def add(self, pieces: list[Piece]) -> None:
        if not self.queue:
            self.pause, self.say_next = self.max_pause, False  # start at the next pause or word
        self.queue.extend(pieces)

    def hush(self) -> None:
        self.queue.clear()

    def choose(self, sampled: int, is_word: bool) -> int | None:
        """The token to put in place of ``sampled`` this step (None: keep it). Call once per step."""
        self.steps += 1
        if not self.queue:
            return None
        if self.say_next or is_word:
            return self._say()
        if sampled == EPAD:
            self.say_next = True
            return None
        self.pause += 1
        if self.pause > self.max_pause:
            self.say_next = True
            return EPAD
        return None

    def _say(self) -> int:
        piece = self.queue.popleft()
        self.log.append((self.steps, piece.surface))
        self.pause = 0
        self.say_next = bool(self.queue) and not self.queue[0].starts_word
        return piece.token

    def output(self) -> tuple[bool, str | None]:
        """Whether this step's output text is a forced piece, and its exact text. Call once per
        executed step, after ``choose``."""
        if self.log and self.log[0][0] == self.steps - self.delay:
            return True, self.log.popleft()[1]
        while self.log and self.log[0][0] < self.steps - self.delay:
            self.log.popleft()  # an output that never came (a failed step): do not wait for it
        return False, None
