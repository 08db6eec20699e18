"""RealtimeConsumer: the WebSocket at /v1/realtime. Thin: handshake, JSON in and out, lifecycle.

The protocol lives in voice.protocol.RealtimeSession, the model behind a slot of the ModelManager,
persistence in SessionRecorder. This class only wires them to one connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from transcripts import services
from transcripts.models import Conversation

from . import loop_monitor, metrics
from .asr import get_backend
from .audio_recording import SessionAudioRecorder
from .auth import authenticate, open_endpoint, presented_key
from .conf import get_config
from .console.publisher import SessionFacts, SessionPublisher
from .engine.manager import get_manager
from .engine.slots import EngineFailure, Slot
from .protocol import Dialect, Effects, RealtimeSession, SessionOptions
from .protocol.errors import ProtocolError
from .protocol.records import TranscriptionOutcome
from .protocol.responses import ResponsePolicy
from .recorder import SessionRecorder
from .transcriber import SessionTranscriber

log = logging.getLogger(__name__)

# Close codes: 1000 ends an SDK client's `async for` quietly; any other makes it raise.
CLOSE_TRY_AGAIN = 4013  # 1013 in the private range: daphne (autobahn) sends only 1000 and 3000-4999
CLOSE_POLICY = 4000
CLOSE_AUTH = 3000  # what OpenAI sends for a bad key (reason invalid_request_error.invalid_api_key)
CLOSE_SERVER_ERROR = 4011  # 1011 in the private range, for the same reason


class RealtimeConsumer(AsyncWebsocketConsumer):
    session: RealtimeSession | None = None
    slot: Slot | None = None
    recorder: SessionRecorder | None = None
    pump: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    transcriber: SessionTranscriber | None = None
    audio_recorder: SessionAudioRecorder | None = None
    console: SessionPublisher | None = None  # what the staff consoles see of this session
    ended_by_id: int | None = None  # the staff member who ended the session, if one did
    gone: bool = False  # the client has disconnected: store, but send nothing
    end_reason: str = ""
    last_heard: float = 0.0

    async def connect(self) -> None:
        """Pick the dialect, take a model slot, greet with session.created."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope.get("headers", [])}
        subprotocols: list[str] = self.scope.get("subprotocols", [])
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        dialect = Dialect.from_handshake(headers, subprotocols)
        loop_monitor.watch_running_loop()
        # Echo `realtime` only when offered: the Python SDK offers none and fails on an unasked one.
        await self.accept(subprotocol="realtime" if "realtime" in subprotocols else None)
        api_key = await authenticate(presented_key(headers, subprotocols))
        if api_key is None and not open_endpoint():
            # Before any session state; the same answer for a missing, wrong or revoked key.
            await self._refuse(
                dialect, "invalid_api_key", "Incorrect or missing API key.", CLOSE_AUTH, "invalid_request_error"
            )
            return

        model_type = query.get("model_type", ["sft"])[0]
        manager = get_manager()
        if manager is None or not manager.ready:
            await self._refuse(dialect, "server_error", "The model is not loaded in this process.", CLOSE_SERVER_ERROR, "server_error")
            return
        if model_type not in manager.engines:
            loaded = ", ".join(sorted(manager.engines))
            await self._refuse(
                dialect, "invalid_model", f"Model type '{model_type}' is not loaded here; loaded: {loaded}.",
                CLOSE_POLICY, "invalid_request_error", param="model_type",
            )
            return
        slot = manager.acquire(model_type, asyncio.get_running_loop())
        if slot is None:
            await self._refuse(
                dialect, "server_busy",
                "Every session slot of this server is in use; try again later.", CLOSE_TRY_AGAIN, "server_error",
            )
            return
        self.slot = slot
        config = get_config()
        self.session = RealtimeSession(
            SessionOptions(
                dialect=dialect,
                model_name=manager.model_name(model_type),
                policy=ResponsePolicy(
                    activity_rms=float(config["RESPONSE_ACTIVITY_RMS"]),
                    end_silence_ms=int(config["RESPONSE_END_SILENCE_MS"]),
                    max_ms=int(config["RESPONSE_MAX_MS"]),
                ),
            )
        )
        client = self.scope.get("client") or ("", 0)
        self.recorder = SessionRecorder(
            session_id=self.session.session_id,
            conversation_id=self.session.conversation_id,
            dialect=dialect.value,
            model_name=manager.model_name(model_type),
            model_type=model_type,
            requested_model=query.get("model", [""])[0],
            client_address=f"{client[0]}:{client[1]}" if client[0] else "",
            api_key_id=api_key["id"] if api_key else None,
        )
        self.recorder.start()
        if config["RECORD_AUDIO"]:
            self.audio_recorder = SessionAudioRecorder(self.session.session_id)
        self.transcriber = SessionTranscriber(
            get_backend(),
            self._transcribed,
            timeout=float(config["ASR_TIMEOUT_S"]),
            retries=int(config["ASR_RETRIES"]),
            max_pending=int(config["ASR_MAX_PENDING"]),
        )
        metrics.SESSIONS_LIVE.inc()
        self.last_heard = time.monotonic()
        if self.channel_layer is not None:
            self.console = SessionPublisher(
                self.channel_layer,
                SessionFacts(
                    session_id=self.session.session_id,
                    client_address=f"{client[0]}:{client[1]}" if client[0] else "",
                    api_key=api_key["name"] if api_key else None,
                    model_type=model_type,
                    model_name=manager.model_name(model_type),
                    dialect=dialect.value,
                    slot=getattr(slot, "index", None),
                ),
            )
            await self.console.start(self.channel_name)
        await self._apply(self.session.start())
        self.pump = asyncio.create_task(self._pump_model_output(), name="model-output")
        self.watchdog = asyncio.create_task(self._end_when_idle(), name="idle-watchdog")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """One client event: the session decides, we send what it says and feed the model."""
        if self.session is None:
            return
        self.last_heard = time.monotonic()
        if text_data is None:
            error = ProtocolError("invalid_event", "Binary frames are not supported; send JSON text events.")
            await self._send_events([self.session.events.error(error, None)])
            return
        if len(text_data) > int(get_config()["MAX_MESSAGE_BYTES"]):
            error = ProtocolError(
                "invalid_event", f"Event is larger than this server's limit of {get_config()['MAX_MESSAGE_BYTES']} bytes."
            )
            await self._send_events([self.session.events.error(error, None)])
            return
        await self._apply(self.session.receive(text_data))

    async def disconnect(self, code: int) -> None:
        """Free the slot at once, then store what is left and close the conversation."""
        for task in (self.pump, self.watchdog):
            if task is not None:
                task.cancel()
        if self.slot is not None:
            self.slot.release()
        self.gone = True
        if self.console is not None:  # off the consoles' list at once, before the final writes
            await self.console.close(self.end_reason or f"disconnect:{code}")
        if self.session is not None and self.recorder is not None:
            await self.recorder.add(self.session.close().records)
            if self.transcriber is not None:  # a turn being transcribed is still stored
                config = get_config()
                await self.transcriber.finish(timeout=float(config["ASR_TIMEOUT_S"]) * (int(config["ASR_RETRIES"]) + 1))
            await self.recorder.close(reason=self.end_reason or f"disconnect:{code}", ended_by_id=self.ended_by_id)
            if self.audio_recorder is not None and self.recorder.conversation_pk is not None:
                names = await self.audio_recorder.finish()
                await database_sync_to_async(services.conversation_recordings_attach)(
                    conversation_pk=self.recorder.conversation_pk, input_name=names["input"], output_name=names["output"]
                )
            metrics.SESSIONS_LIVE.dec()
        self.session = None

    # --- internals ----------------------------------------------------------------------------

    async def _apply(self, effects: Effects) -> None:
        assert self.session is not None and self.slot is not None
        dropped = sum(frame.size for frame in effects.frames if not self.slot.push(frame))
        if self.console is not None:
            self.console.client_audio(effects.frames)
        if dropped:
            self.session.input_dropped(dropped)
            error = ProtocolError(
                "input_audio_buffer_overflow",
                "Audio arrives faster than real time and the input queue is full; the excess was dropped.",
                type="server_error",
            )
            effects.events.append(self.session.events.error(error, None))
        self.slot.set_keep_running(self.session.wants_output)
        if self.transcriber is not None:
            for request in effects.transcriptions:
                self.transcriber.submit(request)
        await self._send_events(effects.events)
        if effects.records and self.recorder is not None:
            await self.recorder.add(effects.records)

    async def _send_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event["type"] == "error":
                metrics.ERRORS.labels(event["error"]["code"] or "none").inc()
            await self.send(text_data=json.dumps(event))
        if self.console is not None:
            self.console.events_sent(events, responding=self.session is not None and self.session.response is not None)

    async def _pump_model_output(self) -> None:
        """Turn each frame the model produced for this slot into response events."""
        assert self.slot is not None and self.session is not None
        while True:
            item = await self.slot.outbox.get()
            if self.session is None:
                return
            if isinstance(item, EngineFailure):
                error = ProtocolError("model_error", item.message, type="server_error")
                await self._send_events([self.session.events.error(error, None)])
                continue
            effects = self.session.model_output(item.text, item.pcm, item.speech, item.client_audio)
            if self.audio_recorder is not None and item.client_audio and item.heard is not None:
                sent = any(event["type"].endswith("audio.delta") for event in effects.events)
                self.audio_recorder.add_frame(item.heard, item.pcm if sent else None)
            await self._apply(effects)
            latency: float | None = None
            if item.pcm is not None and item.client_audio:
                sent = time.perf_counter()
                latency = item.latency_s + sent - item.ready_at
                metrics.FRAME_OVERHEAD_SECONDS.observe(sent - item.ready_at)
                metrics.FRAME_LATENCY_SECONDS.observe(latency)
            if self.console is not None and self.session is not None:
                self.console.model_frame(item.pcm if self.session.wants_output else None, latency)
            if self.slot.dropped_outputs:
                metrics.DROPPED_OUTPUT_FRAMES.inc(self.slot.dropped_outputs)
                self.slot.dropped_outputs = 0

    async def _transcribed(self, outcome: TranscriptionOutcome) -> None:
        """An ASR result, in commit order: tell the client (if still here) and store it."""
        if self.session is None:
            return
        effects = self.session.transcription_completed(outcome)
        if not self.gone:
            await self._send_events(effects.events)
        if self.recorder is not None:
            await self.recorder.add(effects.records)

    async def _end_when_idle(self) -> None:
        """End a session whose client has sent nothing for REALTIME_IDLE_TIMEOUT_S, freeing its slot."""
        timeout = float(get_config()["IDLE_TIMEOUT_S"])
        if timeout <= 0:
            return
        while True:
            remaining = self.last_heard + timeout - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            if self.session is not None:
                error = ProtocolError(
                    "session_idle_timeout",
                    f"The session ended: no client event for {timeout:g} seconds.",
                    type="invalid_request_error",
                )
                await self._send_events([self.session.events.error(error, None)])
            self.end_reason = "idle_timeout"
            await self.close(code=1000)  # a clean close: clients such as LiveKit reconnect on any other
            return

    # --- the staff console (channel-layer messages, from any process) ------------------------

    async def console_roll_call(self, message: dict[str, Any]) -> None:
        """A console opened and asks who is live: answer it alone, with this session's summary."""
        if self.console is not None:
            await self.console.reply(message["reply_to"])

    async def console_watch(self, message: dict[str, Any]) -> None:
        """A console started following this session: send it the transcript so far, not just what comes next."""
        if self.console is not None:
            await self.console.reply(message["reply_to"], detail=True)

    async def console_end_session(self, message: dict[str, Any]) -> None:
        """A staff member ended this session: tell the client why, record who, close cleanly (1000)."""
        if self.session is None or self.gone or self.end_reason:
            return
        log.info("session %s ended by staff member %s", self.session.session_id, message.get("username"))
        self.end_reason = Conversation.ENDED_BY_STAFF
        self.ended_by_id = message.get("user_id")
        error = ProtocolError(
            "session_ended_by_staff", "A staff member ended this session.", type="invalid_request_error"
        )
        await self._send_events([self.session.events.error(error, None)])
        await self.close(code=1000)  # a clean close: a client that reconnects on errors need not

    async def _refuse(
        self, dialect: Dialect, code: str, message: str, close_code: int, error_type: str, param: str | None = None
    ) -> None:
        """Tell the client why in an `error` event, then close, before any session state exists."""
        from .protocol.events import EventFactory

        metrics.SESSIONS_REFUSED.labels(code).inc()
        error = ProtocolError(code, message, param=param, type=error_type)
        await self.send(text_data=json.dumps(EventFactory(dialect).error(error, None)))
        await self.close(code=close_code, reason=f"{error_type}.{code}"[:120])


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any WebSocket path but /v1/realtime: refuse the handshake (HTTP 403), log the path once."""

    async def connect(self) -> None:
        log.warning("refused a WebSocket connection to unknown path %r (the endpoint is /v1/realtime)", self.scope["path"])
        await self.close()
