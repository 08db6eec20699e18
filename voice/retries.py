"""Calling an outside service (the ASR service, the companion model) with bounded retries.

Both are called the same way: a timeout per call, and up to ``retries`` retries after the
failures worth retrying (timeouts, 5xx, 429, a connection that broke), backing off exponentially
from BACKOFF_S, so that a flaky service is given a second chance and a dead one never holds a
session for long. One copy, so that the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

BACKOFF_S = 0.5


async def with_retries(
    call: Callable[[], Awaitable[T]], *, retries: int, catch: type[E], retryable: Callable[[E], bool]
) -> tuple[T | None, E | None, int]:
    """(the result, None, attempts) or (None, the last ``catch`` error, attempts)."""
    attempt = 0
    while True:
        try:
            return await call(), None, attempt + 1
        except catch as exc:
            if retryable(exc) and attempt < retries:
                attempt += 1
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
                continue
            return None, exc, attempt + 1


def ms_since(started: float) -> int:
    """Milliseconds since ``started`` (a time.monotonic() value)."""
    return int((time.monotonic() - started) * 1000)
