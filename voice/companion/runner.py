"""SessionCompanion: a session's calls to the companion model, one at a time, bounded in every way.

A conversation is sequential, so a session's requests run one after another in submission order,
and their outcomes are delivered in that order. Each call has a timeout (the whole streamed answer)
and up to ``retries`` retries after a timeout, a 5xx, a 429 or a connection error, backing off
exponentially from 0.5 s. At most ``max_pending`` requests wait (the one running included); a
request beyond that is not queued: it fails at once with ``companion_busy``, delivered without
waiting for the ones ahead of it. Every failure is an outcome with ``error`` / ``error_code``
(ERROR_CODES), never an exception: ``deliver`` is awaited exactly once for each submitted request,
unless ``finish`` ran out of time or ``cancel`` dropped it. Deliveries never overlap. Both end the
runner: a request submitted after them is dropped (logged), so nothing is called after a session's
end.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from voice.protocol.companion import CompanionOutcome, CompanionRequest

from ..retries import ms_since, with_retries
from .backends import CompanionBackend, CompanionError, CompanionReply

log = logging.getLogger(__name__)


COMPANION_TIMEOUT = "companion_timeout"  # no (whole) answer within the timeout, after the retries
COMPANION_ERROR = "companion_error"  # an HTTP error (its status in the message), unreachable, or an unusable answer
COMPANION_BUSY = "companion_busy"  # max_pending requests were already waiting
COMPANION_UNAVAILABLE = "companion_unavailable"  # no companion configured
ERROR_CODES = (COMPANION_TIMEOUT, COMPANION_ERROR, COMPANION_BUSY, COMPANION_UNAVAILABLE)


class SessionCompanion:
    def __init__(
        self,
        backend: CompanionBackend,
        deliver: Callable[[CompanionOutcome], Awaitable[None]],
        *,
        timeout: float,
        retries: int,
        max_pending: int,
    ) -> None:
        self.backend = backend
        self.deliver = deliver
        self.timeout = timeout
        self.retries = max(0, retries)
        self.max_pending = max(1, max_pending)
        self._waiting: collections.deque[CompanionRequest] = collections.deque()
        self._running: CompanionRequest | None = None
        self._worker: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[None]] = set()  # companion_busy deliveries under way
        self._delivering = asyncio.Lock()
        self._closed = False

    @property
    def enabled(self) -> bool:
        return bool(getattr(self.backend, "enabled", False))

    @property
    def pending(self) -> int:
        """Requests submitted and not yet delivered (the running one included)."""
        return len(self._waiting) + (self._running is not None) + len(self._side)

    def submit(self, request: CompanionRequest) -> None:
        """Queue ``request``; never blocks. Must be called on the session's event loop."""
        if self._closed:
            log.debug("companion request %s after the session's end: dropped", request.request_id)
            return
        if len(self._waiting) + (self._running is not None) >= self.max_pending:
            if len(self._side) >= self.max_pending:
                # Refusals already on their way: a client flooding requests gets no more tasks
                # (the protocol side times the request out on its own: companion_wait_ms).
                log.warning("companion request %s dropped: the session floods the companion", request.request_id)
                return
            outcome = self._failure(
                request, 0, COMPANION_BUSY, f"{self.max_pending} requests are already waiting for the companion."
            )
            task = asyncio.get_running_loop().create_task(
                self._deliver(outcome), name=f"companion-{request.request_id}"
            )
            self._side.add(task)
            task.add_done_callback(self._side.discard)
            return
        self._waiting.append(request)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="companion")

    async def finish(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for every pending outcome to be delivered, then drop what is left.

        For the session's end: later submits are dropped. True when everything was delivered.
        """
        self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        while self.pending and time.monotonic() < deadline:
            tasks = self._tasks()
            if not tasks:
                break
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        done = not self.pending
        if not done:
            log.warning("%d companion request(s) dropped at the session's end", self.pending)
        tasks = self.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)  # let the cancelled calls close their connections
        return done

    def cancel(self) -> list[asyncio.Task[None]]:
        """Drop every pending request now: nothing more is called or delivered, later submits are dropped.

        Returns the tasks it cancelled (a caller may wait for them to end; none needs to).
        """
        self._closed = True
        self._waiting.clear()
        current = asyncio.current_task()  # cancel() from inside a delivery: that delivery ends by itself
        tasks = [task for task in self._tasks() if task is not current]
        for task in tasks:
            task.cancel()
        if self._worker is not current:
            self._running = None
        self._side.clear()
        return tasks

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [task for task in (self._worker, *self._side) if task is not None and not task.done()]

    # --- the worker ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while self._waiting:
            request = self._running = self._waiting.popleft()
            try:
                outcome = await self._call(request)
                await self._deliver(outcome)
            finally:
                self._running = None

    async def _deliver(self, outcome: CompanionOutcome) -> None:
        async with self._delivering:
            try:
                await self.deliver(outcome)
            except Exception:  # noqa: BLE001 - a failed delivery must not stop later outcomes
                log.exception("delivering the companion's answer to %s failed", outcome.request_id)

    async def _call(self, request: CompanionRequest) -> CompanionOutcome:
        started = time.monotonic()

        async def attempt() -> CompanionReply:
            try:
                return await asyncio.wait_for(self.backend.complete(request, timeout=self.timeout), self.timeout)
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome, never the caller's exception
                raise _as_error(exc, self.timeout) from exc

        reply, error, attempts = await with_retries(
            attempt, retries=self.retries, catch=CompanionError, retryable=lambda exc: exc.retryable
        )
        if reply is None:
            assert error is not None
            if error.code != COMPANION_UNAVAILABLE:
                log.warning("companion request %s failed after %d attempt(s): %s", request.request_id, attempts, error)
            return self._failure(request, ms_since(started), error.code, error.message)
        return self._outcome(request, reply, ms_since(started))

    def _outcome(self, request: CompanionRequest, reply: CompanionReply, latency_ms: int) -> CompanionOutcome:
        return CompanionOutcome(
            request=request,
            text=reply.text,
            tool_calls=reply.tool_calls,
            model=reply.model or getattr(self.backend, "model", ""),
            latency_ms=latency_ms,
            usage=reply.usage,
        )

    def _failure(self, request: CompanionRequest, latency_ms: int, code: str, message: str) -> CompanionOutcome:
        return CompanionOutcome(
            request=request,
            text="",
            tool_calls=(),
            model=getattr(self.backend, "model", "") or "",
            latency_ms=latency_ms,
            error=message,
            error_code=code,
        )


def _as_error(exc: BaseException, timeout: float) -> CompanionError:
    if isinstance(exc, CompanionError):
        return exc
    if isinstance(exc, TimeoutError):
        return CompanionError(COMPANION_TIMEOUT, f"The companion did not answer within {timeout:g}s.", retryable=True)
    log.error("the companion backend raised %s", type(exc).__name__, exc_info=exc)
    return CompanionError(COMPANION_ERROR, f"The companion failed: {type(exc).__name__}", retryable=False)
