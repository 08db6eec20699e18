"""SessionTranscriber: sends a session's committed turns to the ASR service, results in order.

Requests run concurrently (a slow answer does not hold up the next segment's request), with a
timeout and bounded retries with exponential backoff, but results are handed back in commit
order, one item after another, even when the service answers out of order. At most
ASR_MAX_PENDING segments wait per session; a segment beyond that fails at once, so a slow or dead
ASR service never stalls audio or grows memory.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import time
import wave
from collections.abc import Awaitable, Callable

import numpy as np

from .asr import TranscriptionBackend, TranscriptionError
from .protocol.audio import SAMPLE_RATE
from .protocol.effects import TranscriptionRequest
from .protocol.records import TranscriptionOutcome
from .retries import ms_since, with_retries

log = logging.getLogger(__name__)


def wav_bytes(audio: np.ndarray) -> bytes:
    """24 kHz mono pcm16 WAV, the format every transcription API takes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes((np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes())
    return out.getvalue()


class SessionTranscriber:
    def __init__(
        self,
        backend: TranscriptionBackend,
        deliver: Callable[[TranscriptionOutcome], Awaitable[None]],
        *,
        timeout: float,
        retries: int,
        max_pending: int,
    ) -> None:
        self.backend = backend
        self.deliver = deliver
        self.timeout = timeout
        self.retries = retries
        self.max_pending = max_pending
        self._pending: collections.deque[asyncio.Task[TranscriptionOutcome]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None

    def submit(self, request: TranscriptionRequest) -> None:
        if not self.backend.enabled:
            return
        if len(self._pending) >= self.max_pending:
            outcome = self._failure(request, 0, "asr_queue_full", "Too many segments are waiting for the ASR service.")
            self._pending.append(asyncio.get_running_loop().create_task(_value(outcome)))
        else:
            self._pending.append(asyncio.create_task(self._transcribe(request), name=f"asr-{request.item_id}"))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="asr-results")
        self._wakeup.set()

    async def finish(self, timeout: float) -> None:
        """Wait (bounded) for every pending result to be delivered; used when the client has gone."""
        if self._drainer is None:
            return
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._pending:
            task.cancel()
        self._drainer.cancel()

    async def _drain(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            outcome = await asyncio.shield(self._pending[0])
            self._pending.popleft()
            try:
                await self.deliver(outcome)
            except Exception:  # noqa: BLE001 - a failed delivery must not stop later results
                log.exception("delivering the transcription of %s failed", outcome.item_id)

    async def _transcribe(self, request: TranscriptionRequest) -> TranscriptionOutcome:
        wav = wav_bytes(request.audio)
        started = time.monotonic()
        result, error, attempts = await with_retries(
            lambda: self.backend.transcribe(
                wav, model=request.model, language=request.language, prompt=request.prompt, timeout=self.timeout
            ),
            retries=self.retries,
            catch=TranscriptionError,
            retryable=lambda exc: exc.retryable,
        )
        if result is None:
            assert error is not None
            log.warning("transcription of %s failed after %d attempt(s): %s", request.item_id, attempts, error)
            return self._failure(request, ms_since(started), error.code, error.message)
        return TranscriptionOutcome(
            item_id=request.item_id,
            text=result.text,
            model=getattr(self.backend, "default_model", "") or request.model,
            language=result.language,
            latency_ms=ms_since(started),
            audio_seconds=request.audio.size / SAMPLE_RATE,
        )

    def _failure(self, request: TranscriptionRequest, latency_ms: int, code: str, message: str) -> TranscriptionOutcome:
        return TranscriptionOutcome(
            item_id=request.item_id,
            text="",
            model=getattr(self.backend, "default_model", "") or request.model,
            language=request.language,
            latency_ms=latency_ms,
            audio_seconds=request.audio.size / SAMPLE_RATE,
            error=message,
            error_code=code,
        )


async def _value(outcome: TranscriptionOutcome) -> TranscriptionOutcome:
    return outcome
