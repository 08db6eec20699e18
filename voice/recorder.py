"""SessionRecorder: stores a session's records in batches from a writer task, off the audio path.

Every ORM call goes through database_sync_to_async, which in Channels shares one thread with every
consumer's connection housekeeping; writing each record as it happens would delay the next audio
append of every session in the process. So records go into a bounded per-session queue and one
task writes whatever has gathered, in one transaction. close() flushes everything and ends the
conversation, so a client that drops loses nothing already said.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async

from transcripts import services

from .protocol import records

log = logging.getLogger(__name__)

QUEUE_RECORDS = 1000
BATCH_RECORDS = 200


class SessionRecorder:
    def __init__(self, **conversation: Any) -> None:
        self._conversation = conversation
        self._queue: asyncio.Queue[records.Record | None] = asyncio.Queue(maxsize=QUEUE_RECORDS)
        self._task: asyncio.Task[None] | None = None
        self.conversation_pk: int | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name="session-recorder")

    async def add(self, batch: list[records.Record]) -> None:
        """Queue records; waits (slowing only this session) if the writer has fallen far behind."""
        for record in batch:
            await self._queue.put(record)

    async def close(self, reason: str, ended_by_id: int | None = None) -> None:
        """Write everything still queued, then mark the conversation ended (and by whom, if staff)."""
        if self._task is None:
            return
        await self._queue.put(None)
        await asyncio.shield(self._task)
        if self.conversation_pk is not None:
            await database_sync_to_async(services.conversation_end)(
                conversation_pk=self.conversation_pk, reason=reason, ended_by_id=ended_by_id
            )

    async def _write_forever(self) -> None:
        self.conversation_pk = await database_sync_to_async(services.conversation_start)(**self._conversation)
        while True:
            batch: list[records.Record] = []
            first = await self._queue.get()
            stop = first is None
            if first is not None:
                batch.append(first)
            while not stop and len(batch) < BATCH_RECORDS and not self._queue.empty():
                record = self._queue.get_nowait()
                if record is None:
                    stop = True
                else:
                    batch.append(record)
            if batch:
                try:
                    await database_sync_to_async(services.conversation_records_apply)(
                        conversation_pk=self.conversation_pk, batch=batch
                    )
                except Exception:  # noqa: BLE001 - a failed write is logged; the call goes on
                    log.exception("storing %d records of session %s failed", len(batch), self._conversation["session_id"])
            if stop:
                return
