"""SessionRecorder: stores a session's records in batches from a writer task, off the audio path.

Every ORM call goes through database_sync_to_async, which in Channels shares one thread with every
consumer's connection housekeeping; writing each record as it happens would delay the next audio
append of every session in the process. So records go into a bounded per-session queue and one
task writes whatever has gathered, in one transaction. close() flushes everything and ends the
conversation, so a client that drops loses nothing already said.

Persistence never stalls a session: a failed write is logged and counted
(``realtime_store_failures_total``, by operation) and the writer goes on with the next batch; a
batch that fails as a whole is retried record by record, so one bad record loses only itself; a
conversation that could not be created is tried again before each later batch. add() waits at
most ADD_WAIT_S for room in a full queue, and not at all once the writer has stopped or the
queue stayed full: the records it cannot queue are dropped and counted. close() gives up after
its timeout (CLOSE_TIMEOUT_S by default), so a database that hangs cannot hang a teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async

from transcripts import services

from . import metrics
from .protocol import records

log = logging.getLogger(__name__)

QUEUE_RECORDS = 1000
BATCH_RECORDS = 200
ADD_WAIT_S = 1.0  # the longest add() waits for room in a full queue before dropping records
CLOSE_TIMEOUT_S = 30.0  # the longest close() waits for the queued writes and the conversation's end


class SessionRecorder:
    def __init__(self, **conversation: Any) -> None:
        self._conversation = conversation
        self._queue: asyncio.Queue[records.Record | None] = asyncio.Queue(maxsize=QUEUE_RECORDS)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._ending: tuple[str, int | None] | None = None  # close()'s reason and who ended the session
        self._overflowing = False  # the queue stayed full for ADD_WAIT_S: add() drops without waiting
        self._dropped = 0
        self._logged: set[str] = set()
        self.conversation_pk: int | None = None

    @property
    def _session_id(self) -> str:
        return str(self._conversation.get("session_id", "?"))

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name="session-recorder")

    async def add(self, batch: list[records.Record], *, wait_s: float = ADD_WAIT_S) -> None:
        """Queue records for the writer; never blocks for long.

        When the queue is full it waits up to ``wait_s`` for room (slowing only this session),
        then drops what does not fit, and until the queue has drained to half it drops without
        waiting. When the writer has stopped or the recorder is closed, nothing is queued. Every
        record dropped is counted (operation ``dropped``); the first drop of a session is logged.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        if self._overflowing and self._queue.qsize() <= self._queue.maxsize // 2:
            self._overflowing = False
        for index, record in enumerate(batch):
            if self._closed or (self._task is not None and self._task.done()):
                self._drop(len(batch) - index, "the recorder is closed" if self._closed else "its writer has stopped")
                return
            try:
                self._queue.put_nowait(record)
                continue
            except asyncio.QueueFull:
                pass
            remaining = deadline - loop.time()
            try:
                if self._overflowing or remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await self._queue.put(record)
            except TimeoutError:
                self._overflowing = True
                self._drop(len(batch) - index, f"its queue of {self._queue.maxsize} records is full")
                return

    async def close(self, reason: str, ended_by_id: int | None = None, *, timeout: float | None = None) -> None:
        """Write everything still queued, then mark the conversation ended (and by whom, if staff).

        The writer task does both, so they are finished even if this call is cancelled. Bounded by
        ``timeout`` seconds (CLOSE_TIMEOUT_S when None), counted from this call whether or not it
        is cancelled: past it, the writer is stopped and what it had still to do is given up
        (logged, counted as ``close_timeout``, its queued records as ``dropped``). Never raises
        for a failed write.
        """
        if self._task is None or self._closed:
            return
        self._closed = True
        self._ending = (reason, ended_by_id)
        if self._task.done():  # the writer has stopped: the conversation's end is still worth a try
            self._task = asyncio.create_task(self._end(), name="session-recorder-end")
        limit = CLOSE_TIMEOUT_S if timeout is None else timeout
        timer = asyncio.get_running_loop().call_later(limit, self._give_up, limit)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes a writer waiting for records; a full queue needs no waking
        await asyncio.wait([self._task])  # not cancelled with this call; the timer bounds it
        timer.cancel()
        if self._dropped:
            log.warning("session %s: %d records were not stored", self._session_id, self._dropped)

    def _give_up(self, limit: float) -> None:
        """close()'s time is up: stop the writer and count what it had still to do."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        lost = sum(1 for record in _drain(self._queue) if record is not None)
        metrics.STORE_FAILURES.labels("close_timeout").inc()
        if lost:
            metrics.STORE_FAILURES.labels("dropped").inc(lost)
            self._dropped += lost
        log.error(
            "session %s: the conversation store did not finish within %s s of the session's end; %d queued "
            "records and the conversation's end (%s) are not stored",
            self._session_id,
            limit,
            lost,
            self._ending[0] if self._ending else "?",
        )

    # --- the writer task ----------------------------------------------------------------------

    async def _write_forever(self) -> None:
        await self._start_conversation()
        while True:
            batch, stop = await self._next_batch()
            if batch:
                try:
                    await self._write(batch)
                except Exception:  # noqa: BLE001 - whatever happens, the writer keeps draining its queue
                    self._lost("record", len(batch), f"{len(batch)} records could not be stored")
            if stop or (self._closed and self._queue.empty()):
                break
        await self._end()

    async def _end(self) -> None:
        """After the last batch: the conversation's end (and, if it was never created, one last try)."""
        if self._ending is None:
            return
        if self.conversation_pk is None:
            await self._start_conversation()
        if self.conversation_pk is not None:
            reason, ended_by_id = self._ending
            await self._store(
                "conversation_end",
                services.conversation_end,
                conversation_pk=self.conversation_pk,
                reason=reason,
                ended_by_id=ended_by_id,
            )

    async def _next_batch(self) -> tuple[list[records.Record], bool]:
        """Whatever has gathered (at least one record, at most BATCH_RECORDS), and whether close() came."""
        batch: list[records.Record] = []
        first = await self._queue.get()
        if first is None:
            return batch, True
        batch.append(first)
        while len(batch) < BATCH_RECORDS and not self._queue.empty():
            record = self._queue.get_nowait()
            if record is None:
                return batch, True
            batch.append(record)
        return batch, False

    async def _start_conversation(self) -> None:
        pk = await self._store("conversation_start", services.conversation_start, **self._conversation)
        if pk is not None:
            self.conversation_pk = pk

    async def _write(self, batch: list[records.Record]) -> None:
        """One transaction for the batch; if it fails, one per record, so a bad record loses only itself."""
        if self.conversation_pk is None:
            await self._start_conversation()  # tried again before each batch while it fails
            if self.conversation_pk is None:
                self._lost("record", len(batch), f"{len(batch)} records lost: the conversation could not be created")
                return
        apply = services.conversation_records_apply
        if await self._store("records", apply, conversation_pk=self.conversation_pk, batch=batch, ok=True):
            return
        if len(batch) == 1:
            self._lost("record", 1, "1 record could not be stored")
            return
        failed = 0
        for record in batch:
            if not await self._store(None, apply, conversation_pk=self.conversation_pk, batch=[record], ok=True):
                failed += 1
        if failed:
            self._lost("record", failed, f"{failed} of {len(batch)} records could not be stored")

    async def _store(self, operation: str | None, function: Any, *, ok: bool = False, **kwargs: Any) -> Any:
        """``function(**kwargs)`` on the database thread; a failure is logged and counted, not raised.

        Returns the function's result (``True`` when ``ok``), or None if it failed.
        """
        try:
            result = await database_sync_to_async(function)(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a failed write is logged and counted; the session goes on
            if operation is not None:
                metrics.STORE_FAILURES.labels(operation).inc()
                self._log_failure(operation, f"{operation} failed", exc)
            else:
                self._log_failure("record_retry", "a record failed", exc)
            return None
        return True if ok else result

    # --- failures -----------------------------------------------------------------------------

    def _lost(self, operation: str, count: int, message: str) -> None:
        metrics.STORE_FAILURES.labels(operation).inc(count)
        log.warning("session %s: %s", self._session_id, message)

    def _drop(self, count: int, why: str) -> None:
        metrics.STORE_FAILURES.labels("dropped").inc(count)
        self._dropped += count
        if "dropped" not in self._logged:
            self._logged.add("dropped")
            log.warning(
                "session %s: %d records not stored because %s (later drops are only counted, in "
                'realtime_store_failures_total{operation="dropped"})',
                self._session_id,
                count,
                why,
            )

    def _log_failure(self, kind: str, message: str, exc: BaseException) -> None:
        """The first failure of each kind with its traceback, later ones on one line."""
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("session %s: %s", self._session_id, message, exc_info=exc)
        else:
            level = logging.DEBUG if kind == "record_retry" else logging.WARNING  # summed up by the batch
            log.log(level, "session %s: %s: %s: %s", self._session_id, message, type(exc).__name__, exc)


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
