"""The protocols a session runtime can serve: what differs between the Realtime and the Live API.

A front end (a WebSocket consumer) picks one of these at the handshake. The runtime asks it for
the protocol session (RealtimeSession or LiveSession, both plain Python with the same shape of
interface: `ProtocolSession`), for the shape of an `error` to refuse with before any session
exists, and for the dialect under which the conversation is stored. Everything else (slot,
recorder, transcriber, console, boundary, teardown) is the same runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..live import LiveOptions, LiveSession
from ..live.events import LiveEvents
from ..protocol import Dialect, Effects, RealtimeSession, SessionOptions
from ..protocol.companion import CompanionOutcome
from ..protocol.errors import ProtocolError
from ..protocol.events import EventFactory
from ..protocol.limits import SessionLimits
from ..protocol.records import TranscriptionOutcome
from ..protocol.responses import ResponsePolicy


class ProtocolEvents(Protocol):
    def error(self, exc: ProtocolError, client_event_id: str | None) -> dict[str, Any]: ...


class ProtocolSession(Protocol):
    """What the runtime drives: RealtimeSession and LiveSession both are one."""

    session_id: str
    conversation_id: str
    events: Any  # builds `error` events: ProtocolEvents
    close_code: int | None  # set: close the socket with it once these effects are sent
    close_reason: str | None  # and why (stored as the conversation's end reason)
    model_type: str | None  # the model the session asked for after the handshake, if any

    def start(self) -> Effects: ...
    def receive(self, text: str | bytes) -> Effects: ...
    def model_output(
        self,
        text: str | None,
        pcm: np.ndarray | None,
        speech: Sequence[float] = (),
        client_audio: bool = True,
        *,
        forced: bool = False,
        forced_left: int = 0,
    ) -> Effects: ...
    def transcription_completed(self, outcome: TranscriptionOutcome) -> Effects: ...
    def companion_completed(self, outcome: CompanionOutcome) -> Effects: ...
    def input_dropped(self, samples: int) -> None: ...
    def close(self) -> Effects: ...

    @property
    def wants_output(self) -> bool: ...

    @property
    def wants_speech(self) -> bool: ...

    @property
    def responding(self) -> bool: ...


class Front(Protocol):
    storage_dialect: str
    paced: bool  # its slots never step ahead of the tick (see Slot.paced)

    def error_event(self, exc: ProtocolError) -> dict[str, Any]: ...

    def new_session(self, model_name: str, config: Mapping[str, Any]) -> ProtocolSession: ...


def _policy(config: Mapping[str, Any]) -> ResponsePolicy:
    return ResponsePolicy(
        activity_rms=config["RESPONSE_ACTIVITY_RMS"],
        end_silence_ms=config["RESPONSE_END_SILENCE_MS"],
        max_ms=config["RESPONSE_MAX_MS"],
    )


@dataclass(frozen=True)
class RealtimeFront:
    """/v1/realtime, in the GA or the beta dialect."""

    dialect: Dialect
    paced: bool = False  # a backlog is caught up at once: turns end on time after a stall
    companion: bool = False  # a companion model is configured: tools and instructions go through it
    transcribe: bool = False  # an ASR service is configured

    @property
    def storage_dialect(self) -> str:
        return self.dialect.value

    def error_event(self, exc: ProtocolError) -> dict[str, Any]:
        return EventFactory(self.dialect).error(exc, None)

    def new_session(self, model_name: str, config: Mapping[str, Any]) -> ProtocolSession:
        options = SessionOptions(
            dialect=self.dialect,
            model_name=model_name,
            policy=_policy(config),
            limits=SessionLimits.from_config(config),
            companion=self.companion,
            transcribe=self.transcribe,
        )
        return RealtimeSession(options)


@dataclass(frozen=True)
class LiveFront:
    """/v1/live/sessions: OpenAI's full-duplex Live API."""

    # This server's own model names (the loaded checkpoints') -> model type; gpt-live-* map to sft.
    server_models: Mapping[str, str] = field(default_factory=dict)
    transcribe: bool = False  # an ASR service is configured: user segments become input transcripts
    companion: bool = False  # a companion model is configured: delegation goes through it
    storage_dialect: str = "live"
    paced: bool = True  # one output frame per tick, whatever the client flushes

    def error_event(self, exc: ProtocolError) -> dict[str, Any]:
        return LiveEvents().error(exc, None)

    def new_session(self, model_name: str, config: Mapping[str, Any]) -> ProtocolSession:
        options = LiveOptions(
            server_models=dict(self.server_models),
            max_duration_s=config["LIVE_MAX_DURATION_S"],
            policy=_policy(config),
            transcription_model=(config["ASR_MODEL"] or "whisper-1") if self.transcribe else None,
            companion=self.companion,
        )
        return LiveSession(options)
