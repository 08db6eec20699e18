"""SessionRuntime: one live session, everything it owns, one error boundary and one teardown.

A front end (the Realtime WebSocket consumer today) does the handshake and moves text in and out;
this object owns the rest: the model slot, the protocol session, the recorder, the transcriber,
the audio recorder, the console publisher, the output pump and the watchdog. Every way in (a
client event, a model frame, a transcription result, a console message, a timer) runs inside
`boundary()`, which turns an exception into an `error` event and lets the session go on; every way
out (a clean close, a TCP reset, a crash, a cancelled task, SIGTERM) ends in `teardown()`, which
runs once, step by step, each step guarded, so that the slot, the gauges and the stored
conversation never depend on a handler reaching its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async

from transcripts import services

from .. import metrics
from ..asr import get_backend
from ..audio_recording import SessionAudioRecorder
from ..companion import SessionCompanion, get_companion
from ..console.publisher import SessionFacts, SessionPublisher
from ..engine import DEFAULT_MODEL_TYPE
from ..engine.remote import RemoteSlot
from ..engine.slots import EngineFailure, FrameOutput, Slot
from ..protocol import Effects
from ..protocol.companion import CompanionOutcome
from ..protocol.errors import ProtocolError
from ..protocol.records import TranscriptionOutcome
from ..recorder import SessionRecorder
from ..transcriber import SessionTranscriber
from .fronts import Front, ProtocolSession
from .live import key_group, live_sessions
from .model_link import ModelLink
from .transport import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_SERVER_ERROR, CLOSE_TRY_AGAIN, Transport

log = logging.getLogger(__name__)

# Past this many internal errors a session is ended rather than answered error after error.
MAX_INTERNAL_ERRORS = 20
INTERNAL_ERROR_MESSAGE = "The server had an error while processing your request; the session goes on."

# Why sessions end, as stored in Conversation.end_reason and counted in metrics.
END_IDLE = "idle_timeout"
END_STAFF = "ended_by_staff"
END_KEY_REVOKED = "api_key_revoked"
END_NOT_READING = "client_not_reading"
END_SHUTDOWN = "server_shutdown"
END_SERVER_ERROR = "server_error"
END_CANCELLED = "cancelled"
END_SERVER_BUSY = "server_busy"
END_ENGINE_LOST = "engine_lost"


@dataclass(frozen=True)
class Handshake:
    """What a front end learnt from the connection request."""

    front: Front  # which protocol: RealtimeFront(dialect) or LiveFront
    presented_key: str | None
    model_type: str = DEFAULT_MODEL_TYPE
    requested_model: str = ""
    client_address: str = ""


class SessionRuntime:
    def __init__(
        self,
        *,
        handshake: Handshake,
        api_key: dict[str, Any] | None,
        slot: Slot | RemoteSlot,
        model_name: str,
        transport: Transport,
        channel_layer: Any,
        channel_name: str,
        config: dict[str, Any],
    ) -> None:
        self.handshake = handshake
        self.api_key_id: int | None = api_key["id"] if api_key else None
        self.model = ModelLink(slot, handshake.model_type)
        self.transport = transport
        self.layer = channel_layer
        self.channel_name = channel_name
        self.config = config
        self.session: ProtocolSession = handshake.front.new_session(model_name, config)
        self.recorder = SessionRecorder(
            session_id=self.session.session_id,
            conversation_id=self.session.conversation_id,
            dialect=handshake.front.storage_dialect,
            model_name=model_name,
            model_type=handshake.model_type,
            requested_model=handshake.requested_model,
            client_address=handshake.client_address,
            api_key_id=self.api_key_id,
        )
        self.audio_recorder = SessionAudioRecorder(self.session.session_id) if config["RECORD_AUDIO"] else None
        self.transcriber = SessionTranscriber(
            get_backend(),
            self._transcribed,
            timeout=config["ASR_TIMEOUT_S"],
            retries=config["ASR_RETRIES"],
            max_pending=config["ASR_MAX_PENDING"],
        )
        self.companion = SessionCompanion(
            get_companion(),
            self._companion_answered,
            timeout=config["COMPANION_TIMEOUT_S"],
            retries=config["COMPANION_RETRIES"],
            max_pending=config["COMPANION_MAX_PENDING"],
        )
        self.console: SessionPublisher | None = None
        if channel_layer is not None:
            self.console = SessionPublisher(
                channel_layer,
                SessionFacts(
                    session_id=self.session.session_id,
                    client_address=handshake.client_address,
                    api_key=api_key["name"] if api_key else None,
                    model_type=handshake.model_type,
                    model_name=model_name,
                    dialect=handshake.front.storage_dialect,
                    slot=getattr(slot, "index", None),
                ),
            )
        self.max_unsent = config["MAX_UNSENT_BYTES"]
        self.last_heard = time.monotonic()
        self.end_reason = ""  # set once, by whatever ends the session first
        self.ended_by_id: int | None = None  # the staff member who ended it, if one did
        self.closed = False  # nothing more is sent to the client
        self.internal_errors = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._teardown: asyncio.Task[None] | None = None
        self._counted = False

    @property
    def session_id(self) -> str:
        return self.session.session_id

    # --- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Count the session, start its collaborators, greet the client with session.created."""
        live_sessions.add(self)
        metrics.SESSIONS_LIVE.inc()
        self._counted = True
        self.recorder.start()
        if self.console is not None:
            await self.console.start(self.channel_name)
        if self.api_key_id is not None and self.layer is not None:
            await self.layer.group_add(key_group(self.api_key_id), self.channel_name)
        await self._apply(self.session.start())
        self._tasks = [
            self._spawn(self._pump_model_output(), "model-output"),
            self._spawn(self._end_when_idle(), "idle-watchdog"),
        ]

    def _spawn(self, body: Any, name: str) -> asyncio.Task[None]:
        """A task of this session; if it dies of anything but cancellation, the session ends."""
        task = asyncio.create_task(body, name=f"{name}-{self.session_id}")
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.end_reason:
            return
        if task.exception() is not None:
            log.error("session %s: task %s died", self.session_id, task.get_name(), exc_info=task.exception())
            asyncio.get_running_loop().create_task(
                self.end(
                    END_SERVER_ERROR,
                    ProtocolError("server_error", "The session failed on the server.", type="server_error"),
                )
            )

    # --- the error boundary ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def boundary(self, where: str, client_event_id: str | None = None) -> AsyncIterator[None]:
        """Run one piece of session work: an exception becomes an `error` event, the session goes on."""
        try:
            yield
        except Exception:  # noqa: BLE001 - the error boundary: any failure becomes an error event
            await self.failed(where, client_event_id)

    async def failed(self, where: str, client_event_id: str | None = None) -> None:
        """Report the exception being handled: logged with its traceback, an `error` event to the client.

        The event says only that the server failed (no internals). A session that keeps failing is
        ended instead, stored with the reason server_error. Call it only from an `except` block.
        """
        log.exception("session %s: %s failed", self.session_id, where)
        metrics.SESSION_FAILURES.labels(where.split(":")[0]).inc()
        self.internal_errors += 1
        if self.internal_errors > MAX_INTERNAL_ERRORS:
            await self.end(
                END_SERVER_ERROR,
                ProtocolError("server_error", "The session failed on the server.", type="server_error"),
            )
            return
        error = ProtocolError("server_error", INTERNAL_ERROR_MESSAGE, type="server_error")
        try:
            await self._send_events([self.session.events.error(error, client_event_id)])
        except Exception:  # noqa: BLE001 - cannot even tell the client: end the session
            log.exception("session %s: could not report a failure; ending it", self.session_id)
            await self.end(END_SERVER_ERROR)

    # --- client events --------------------------------------------------------------------------

    async def receive_text(self, text: str) -> None:
        """One client event: the protocol session decides, the runtime sends and feeds the model."""
        if self.end_reason:
            return
        self.last_heard = time.monotonic()
        if len(text) > self.config["MAX_MESSAGE_BYTES"]:
            limit = self.config["MAX_MESSAGE_BYTES"]
            error = ProtocolError("invalid_event", f"Event is larger than this server's limit of {limit} bytes.")
            await self._send_events([self.session.events.error(error, None)])
            return
        effects: Effects | None = None
        async with self.boundary("client_event"):
            effects = self.session.receive(text)
        if effects is not None:
            async with self.boundary("client_event", effects.client_event_id):
                await self._apply(effects)

    async def receive_bytes(self) -> None:
        if self.end_reason:
            return
        self.last_heard = time.monotonic()
        error = ProtocolError("invalid_event", "Binary frames are not supported; send JSON text events.")
        await self._send_events([self.session.events.error(error, None)])

    # --- model output, transcriptions, timers ---------------------------------------------------

    async def _pump_model_output(self) -> None:
        """Turn each frame the model produced for this slot into events; one bad frame is one error."""
        while not self.end_reason:
            item = await self.model.next_output()
            async with self.boundary("model_output"):
                await self._model_frame(item)

    async def _model_frame(self, item: FrameOutput | EngineFailure) -> None:
        if self.end_reason:
            return
        if isinstance(item, EngineFailure):
            error = ProtocolError("model_error", item.message, type="server_error")
            if item.fatal:  # the engine process is gone: say so, close, free everything
                await self.end(END_ENGINE_LOST, error, close_code=CLOSE_SERVER_ERROR)
                return
            await self._send_events([self.session.events.error(error, None)])
            return
        effects = self.session.model_output(
            item.text, item.pcm, item.speech, item.client_audio, forced=item.forced, forced_left=item.forced_left
        )
        if self.audio_recorder is not None and item.client_audio and item.heard is not None:
            sent = any(event["type"].endswith("audio.delta") for event in effects.events)
            self.audio_recorder.add_frame(item.heard, item.pcm if sent else None)
        await self._apply(effects)
        latency: float | None = None
        if item.pcm is not None and item.client_audio:
            sent_at = time.perf_counter()
            latency = item.latency_s + sent_at - item.ready_at
            metrics.FRAME_OVERHEAD_SECONDS.observe(sent_at - item.ready_at)
            metrics.FRAME_LATENCY_SECONDS.observe(latency)
        if self.console is not None:
            self.console.model_frame(item.pcm if self.session.wants_output else None, latency)
        self.model.count_dropped_outputs()

    async def _transcribed(self, outcome: TranscriptionOutcome) -> None:
        """An ASR result, in commit order: tell the client (if still here), act on it (a companion
        may be waiting for the user's words) and store it."""
        async with self.boundary("transcription"):
            await self._apply(self.session.transcription_completed(outcome))

    async def _companion_answered(self, outcome: CompanionOutcome) -> None:
        """The companion's answer (or failure), in request order: events, speech, the stored call."""
        async with self.boundary("companion"):
            await self._apply(self.session.companion_completed(outcome))

    async def _end_when_idle(self) -> None:
        """End a session whose client has sent nothing for REALTIME_IDLE_TIMEOUT_S, freeing its slot."""
        timeout = self.config["IDLE_TIMEOUT_S"]
        if timeout <= 0:
            return
        while not self.end_reason:
            remaining = self.last_heard + timeout - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            error = ProtocolError(
                "session_idle_timeout",
                f"The session ended: no client event for {timeout:g} seconds.",
                type="invalid_request_error",
            )
            # A clean close: clients such as LiveKit reconnect on any other.
            await self.end(END_IDLE, error)

    # --- console and key messages ---------------------------------------------------------------

    async def console_reply(self, reply_to: str, *, detail: bool) -> None:
        if self.console is not None and not self.end_reason:
            async with self.boundary("console"):
                await self.console.reply(reply_to, detail=detail)

    async def end_by_staff(self, user_id: int | None, username: str) -> None:
        """A staff member ended this session: tell the client why, record who, close cleanly (1000)."""
        if self.end_reason:
            return
        log.info("session %s ended by staff member %s", self.session_id, username)
        self.ended_by_id = user_id
        error = ProtocolError(
            "session_ended_by_staff", "A staff member ended this session.", type="invalid_request_error"
        )
        await self.end(END_STAFF, error)

    async def key_revoked(self) -> None:
        error = ProtocolError(
            "api_key_revoked",
            "The API key of this session was revoked; the session ended.",
            type="invalid_request_error",
        )
        await self.end(END_KEY_REVOKED, error)

    # --- sending --------------------------------------------------------------------------------

    async def _apply(self, effects: Effects) -> None:
        """Act on what the protocol session decided: frames to the model, events out, records stored.

        Once the session has ended only the records are stored (a transcription or a companion
        answer that arrives during the teardown is still kept).
        """
        if self.end_reason:
            await self.recorder.add(effects.records)
            return
        errors = self.model.feed(effects, self.session)
        if self.console is not None:
            self.console.client_audio(effects.frames)
        effects.events.extend(self.session.events.error(error, effects.client_event_id) for error in errors)
        for request in effects.transcriptions:
            self.transcriber.submit(request)
        for call in effects.companion:
            self.companion.submit(call)
        await self._send_events(effects.events)
        if effects.records:
            await self.recorder.add(effects.records)
        wanted = self.session.model_type
        if wanted is not None and wanted != self.model.model_type and not self.end_reason:
            await self._switch_model(wanted)
        if self.session.close_code is not None and not self.end_reason:
            # The protocol ended the session itself (Live: session.closed was just sent).
            reason = self.session.close_reason or "closed_by_protocol"
            await self.end(reason, close_code=self.session.close_code)

    async def _switch_model(self, model_type: str) -> None:
        """The session chose another model type after connecting (Live's session.start names its
        model): move to a slot of that model, or end the session if none is free."""
        model_name = await self.model.switch(model_type, self.session)
        if model_name is None:
            error = ProtocolError(
                "server_busy", f"No slot of the '{model_type}' model is free; try again later.", type="server_error"
            )
            await self.end(END_SERVER_BUSY, error, close_code=CLOSE_TRY_AGAIN)
            return
        for task in self._tasks[:1]:  # the pump waits on the old slot's outbox
            task.cancel()
        self._tasks[:1] = [self._spawn(self._pump_model_output(), "model-output")]
        if self.console is not None:
            self.console.update_facts(model_type=model_type, model_name=model_name, slot=self.model.index)

    async def _send_events(self, events: list[dict[str, Any]]) -> None:
        if self.closed:
            return
        for event in events:
            if event["type"] == "error":
                metrics.ERRORS.labels(event["error"]["code"] or "none").inc()
            await self.transport.send_text(json.dumps(event))
        if self.console is not None:
            self.console.events_sent(events, responding=self.session.responding)
        unsent = self.transport.unsent_bytes()
        if unsent is not None and unsent > self.max_unsent:
            await self._drop_slow_client(unsent)

    async def _drop_slow_client(self, unsent: int) -> None:
        """A client that stopped reading: its unsent output is dropped with the connection."""
        log.warning(
            "session %s: %d bytes unsent (REALTIME_MAX_UNSENT_BYTES %d); dropping the connection",
            self.session_id,
            unsent,
            self.max_unsent,
        )
        self.closed = True
        self.transport.abort()
        await self.end(END_NOT_READING)

    # --- ending ---------------------------------------------------------------------------------

    async def end(self, reason: str, error: ProtocolError | None = None, close_code: int = CLOSE_NORMAL) -> None:
        """End the session from the server's side: say why (if the client still listens), close, tear down."""
        if self.end_reason:
            return
        self.end_reason = reason
        if not self.closed:
            try:
                if error is not None:
                    await self._send_events([self.session.events.error(error, None)])
                self.closed = True
                # A clean close says nothing more; another code names the error, as refusals do.
                reason = f"{error.type}.{error.code}"[:120] if error and close_code != CLOSE_NORMAL else ""
                await self.transport.close(close_code, reason)
            except Exception:  # noqa: BLE001 - the connection may already be gone
                log.debug("session %s: closing the connection failed", self.session_id, exc_info=True)
            self.closed = True
        await self.teardown(reason)

    async def shutdown(self) -> None:
        """The server is going away (SIGTERM) or cancelled this session: end it within the grace period."""
        draining = live_sessions.draining
        error = (
            ProtocolError("server_shutting_down", "The server is shutting down; connect again.", type="server_error")
            if draining
            else None
        )
        reason = END_SHUTDOWN if draining else END_CANCELLED
        grace = self.config["SHUTDOWN_GRACE_S"]
        try:
            await asyncio.wait_for(self.end(reason, error, CLOSE_GOING_AWAY if draining else CLOSE_NORMAL), grace)
        except TimeoutError:
            log.warning("session %s: not stored within the %gs shutdown grace", self.session_id, grace)

    async def teardown(self, reason: str) -> None:
        """Give everything back, once, whatever happened before; safe to call from any path."""
        if self._teardown is None:
            self.end_reason = self.end_reason or reason
            self.closed = True
            self._teardown = asyncio.get_running_loop().create_task(
                self._teardown_steps(), name=f"teardown-{self.session_id}"
            )
        # Shielded: a second cancellation (daphne's close timeout, shutdown) must not cut it short.
        await asyncio.shield(self._teardown)

    async def _teardown_steps(self) -> None:
        reason = self.end_reason
        for task in self._tasks:
            task.cancel()
        steps: list[tuple[str, Any]] = [
            ("release the slot", self._release),
            ("leave the consoles", self._leave_consoles),
            ("store what is open", self._store_open),
            ("stop the companion", self._stop_companion),
            ("finish transcriptions", self._finish_transcriptions),
            ("close the conversation", self._close_conversation),
            ("save recordings", self._save_recordings),
        ]
        for name, step in steps:
            try:
                await step()
            except Exception:  # noqa: BLE001 - every later step still runs
                log.exception("session %s: teardown step %r failed", self.session_id, name)
        metrics.SESSIONS_ENDED.labels(reason.split(":")[0]).inc()

    async def _release(self) -> None:
        self.model.release()
        live_sessions.discard(self)
        if self._counted:
            self._counted = False
            metrics.SESSIONS_LIVE.dec()

    async def _leave_consoles(self) -> None:
        if self.api_key_id is not None and self.layer is not None:
            await self.layer.group_discard(key_group(self.api_key_id), self.channel_name)
        if self.console is not None:  # off the consoles' list at once, before the final writes
            await self.console.close(self.end_reason)

    async def _store_open(self) -> None:
        await self.recorder.add(self.session.close().records)

    async def _stop_companion(self) -> None:
        # Nobody is left to hear an answer: what is still asked of the companion is dropped.
        self.companion.cancel()

    async def _finish_transcriptions(self) -> None:
        # A turn being transcribed is still stored, within the ASR service's own bounds.
        limit = self.config["ASR_TIMEOUT_S"] * (self.config["ASR_RETRIES"] + 1)
        await self.transcriber.finish(timeout=limit)

    async def _close_conversation(self) -> None:
        await self.recorder.close(reason=self.end_reason, ended_by_id=self.ended_by_id)

    async def _save_recordings(self) -> None:
        if self.audio_recorder is not None and self.recorder.conversation_pk is not None:
            names = await self.audio_recorder.finish()
            await database_sync_to_async(services.conversation_recordings_attach)(
                conversation_pk=self.recorder.conversation_pk, input_name=names["input"], output_name=names["output"]
            )
