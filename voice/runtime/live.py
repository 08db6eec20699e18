"""The live sessions of this process: per-key counts, draining on shutdown, key revocation.

One registry per process, touched only from the event loop (except `begin_drain`, which only
sets a flag). The runtime registers a session once it holds a slot and unregisters it in its
teardown, whatever ended it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from ..models import ApiKey

if TYPE_CHECKING:
    from .session import SessionRuntime

log = logging.getLogger(__name__)


def key_group(api_key_id: int) -> str:
    """The channel-layer group of every live session opened with one API key, in any process."""
    return f"apikey.{api_key_id}"


# The channel-layer message a session gets when its key is revoked (handler `session_key_revoked`).
KEY_REVOKED = "session.key_revoked"


class LiveSessions:
    def __init__(self) -> None:
        self.sessions: set[SessionRuntime] = set()
        self.per_key: Counter[int] = Counter()
        self.draining = False
        self._drain_hooked = False

    def key_full(self, api_key_id: int | None, cap: int) -> bool:
        """True when this key already holds ``cap`` sessions here (cap 0: no cap)."""
        return api_key_id is not None and cap > 0 and self.per_key[api_key_id] >= cap

    def add(self, runtime: SessionRuntime) -> None:
        self.sessions.add(runtime)
        if runtime.api_key_id is not None:
            self.per_key[runtime.api_key_id] += 1

    def discard(self, runtime: SessionRuntime) -> None:
        if runtime in self.sessions:
            self.sessions.discard(runtime)
            if runtime.api_key_id is not None:
                self.per_key[runtime.api_key_id] -= 1
                if self.per_key[runtime.api_key_id] <= 0:
                    del self.per_key[runtime.api_key_id]

    def begin_drain(self) -> None:
        """The process is shutting down: refuse new sessions, readiness says 503."""
        if not self.draining:
            log.warning("shutting down: refusing new sessions, ending %d live session(s)", len(self.sessions))
        self.draining = True

    async def end_all(self) -> None:
        """End every live session as the server goes away: told, stored, closed with 1001."""
        await asyncio.gather(*(runtime.shutdown() for runtime in list(self.sessions)), return_exceptions=True)

    def hook_server_shutdown(self) -> None:
        """Under daphne (Twisted), drain before the reactor closes any connection (SIGTERM).

        Twisted runs every "before shutdown" trigger and waits for the Deferreds they return
        before it disconnects anything, so the live sessions are told, stored and closed first.
        daphne's own trigger cancels every application meanwhile; a cancelled session runs the same
        idempotent shutdown (consumers.py), so whichever comes first does the work once.
        """
        if self._drain_hooked or "twisted.internet.reactor" not in sys.modules:
            return
        self._drain_hooked = True
        from twisted.internet import defer, reactor

        def drain() -> defer.Deferred[None]:
            self.begin_drain()
            return defer.Deferred.fromFuture(asyncio.ensure_future(self.end_all()))

        reactor_any: Any = reactor
        reactor_any.addSystemEventTrigger("before", "shutdown", drain)


live_sessions = LiveSessions()


@receiver(post_save, sender=ApiKey, dispatch_uid="voice.runtime.live.key_revoked")
def _key_revoked(sender: type[ApiKey], instance: ApiKey, update_fields: Any = None, **kwargs: Any) -> None:
    """A revoked key ends its live sessions, in every process that shares the channel layer.

    Sent once the revocation is committed, so a session that reconnects at once is refused.
    """
    if instance.revoked_at is None or (update_fields is not None and "revoked_at" not in update_fields):
        return
    layer = get_channel_layer()
    if layer is None:
        return

    def notify() -> None:
        try:
            async_to_sync(layer.group_send)(key_group(instance.pk), {"type": KEY_REVOKED})
        except Exception:  # noqa: BLE001 - the key is revoked whatever the layer does; new sessions are refused
            log.warning("could not tell the live sessions of key %s that it was revoked", instance.pk, exc_info=True)

    transaction.on_commit(notify)
