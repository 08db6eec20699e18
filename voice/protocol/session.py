"""RealtimeSession: the protocol state machine of one connection.

It takes client events (raw JSON text) and model output frames and returns Effects: server events
to send, audio frames for the model, and records to store. `receive` never raises, whatever it is
given: every ProtocolError (input checked by type before use, see validation.py; a budget of
limits.py exceeded) becomes an `error` event naming the offending client event, anything else a
generic `server_error` (and a logged traceback), and the session goes on.

Why it exists: it is the one place that decides *when* things happen (an event is accepted, a turn
ends, a response opens or closes). What an item holds lives in conversation.py, what a response
holds and what opening or closing one sends in responses.py, the checks in validation.py and
limits.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic

from . import client_events, limits, records, session_config, validation
from .audio import SAMPLE_RATE, FrameAssembler, decode_pcm16, rms
from .conversation import Conversation, client_item, user_audio_item
from .dialect import Dialect
from .effects import Effects, TranscriptionRequest
from .errors import ProtocolError
from .events import EventFactory
from .ids import new_id
from .input_buffer import InputAudioBuffer
from .limits import SessionLimits, TokenBucket
from .records import TranscriptionOutcome
from .responses import Response, ResponsePolicy, check_request, close_response, open_response, output_events
from .turn_detection import TurnDetector

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100

# Settings that are accepted and reflected but that Moshi cannot act on; logged once per process.
_IGNORED_SETTINGS: set[str] = set()

# What a client is told when the server itself fails on its event: nothing of the internals.
_SERVER_ERROR = ProtocolError(
    "server_error", "The server had an error while processing your request.", type="server_error"
)

Handler = Callable[[dict[str, Any], "pydantic.BaseModel | None"], Effects]


@dataclass(frozen=True)
class SessionOptions:
    dialect: Dialect
    model_name: str
    instructions: str = "You are Moshi, a friendly voice assistant."
    policy: ResponsePolicy = field(default_factory=ResponsePolicy)
    limits: SessionLimits = field(default_factory=SessionLimits)
    now: Callable[[], float] = time.monotonic  # the rate limit's clock


class RealtimeSession:
    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.dialect = options.dialect
        self.policy = options.policy
        self.limits = options.limits
        self.events = EventFactory(options.dialect)
        self.session_id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.config = session_config.default_session(
            session_id=self.session_id, model=options.model_name, instructions=options.instructions
        )
        self.conversation = Conversation(options.limits)
        rate = options.limits.max_events_per_second
        self._bucket = TokenBucket(rate, 2 * rate, options.now)
        self._configs_stored = 0
        self.response: Response | None = None
        # What the runtime asks every protocol session (voice/runtime/fronts.py). A Realtime session
        # never closes the socket itself, and its model is chosen at the handshake (?model_type=).
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.model_type: str | None = None
        self._frames = FrameAssembler()
        self.turns = TurnDetector()
        self._speech_item_id: str | None = None
        self._speech_start_ms = 0
        self._answer_after_response = False
        self.input_audio = InputAudioBuffer()
        self._handlers: dict[str, Handler] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": lambda event, model: Effects(),
        }

    # --- entry points -------------------------------------------------------------------------

    def start(self) -> Effects:
        """The greeting: `session.created` (and, in beta, `conversation.created`)."""
        effects = Effects(events=[self.events.session_created(self.config)])
        if self.dialect is Dialect.BETA:
            effects.events.append(self.events.conversation_created(self.conversation_id))
        effects.records.extend(self._store_config())
        return effects

    def receive(self, text: str | bytes) -> Effects:
        """Handle one client frame; bad input gives an `error` event and changes nothing else.

        Never raises. The Effects carry the client's `event_id` (``client_event_id``), for errors
        the caller adds later (input queue overflow).
        """
        event_id: str | None = None
        allowed = self._bucket.take()  # every frame counts, even one that is not JSON
        try:
            try:
                event = client_events.parse(text)
            except ProtocolError:
                if allowed:
                    raise
                event = {}
            # Read before any other check, so that even an event that fails them is named.
            event_id = client_events.event_id(event)
            if not allowed:
                raise limits.rate_limited(self.limits)
            validation.check_json(event)
            client_events.check_type(event)
            handler = self._handlers.get(event["type"])
            if handler is None:
                raise ProtocolError(
                    "invalid_value",
                    f"Invalid value: '{validation.shown(event['type'])}'. Supported values are: "
                    f"{', '.join(sorted(self._handlers))}.",
                    param="type",
                )
            effects = handler(event, client_events.validate(event, self.dialect))
        except ProtocolError as exc:
            effects = Effects(events=[self.events.error(exc, event_id)])
        except Exception:
            # A bug, not the client's mistake: the client learns only that its event failed.
            log.exception("session %s: client event %r failed", self.session_id, event_id)
            effects = Effects(events=[self.events.error(_SERVER_ERROR, event_id)])
        effects.client_event_id = event_id
        return effects

    def model_output(
        self,
        text: str | None,
        pcm: np.ndarray | None,
        speech: Sequence[float] = (),
        client_audio: bool = True,
    ) -> Effects:
        """One 80 ms tick of the model: what it heard (VAD scores) and what it said.

        ``text`` is a text piece (None for padding) and ``pcm`` the model's audio (None before its
        first frame); ``speech`` scores each 32 ms window of the client's audio in this frame.
        Model output reaches the client only inside a response: one opened by `response.create`
        or by turn detection when the user stops speaking.
        """
        effects = Effects()
        if client_audio:
            effects.extend(self._detect_turns(speech))
        response = self.response
        if response is None or (pcm is None and text is None):
            return effects
        active = text is not None or (pcm is not None and rms(pcm) > self.policy.activity_rms)
        effects.events.extend(output_events(self.events, response, text, pcm))
        if response.observe(active, self.policy) or response.over_time_limit(self.policy):
            effects.extend(self._close_response("completed", None))
        elif response.over_token_budget():
            effects.extend(self._close_response("incomplete", "max_output_tokens"))
        if self.response is None and self._answer_after_response:
            self._answer_after_response = False
            effects.extend(self._open_response({}))
        return effects

    def _detect_turns(self, speech: Sequence[float]) -> Effects:
        """Turn detection: speech_started (barging in on a response), speech_stopped, commit, respond."""
        effects = Effects()
        turn = session_config.turn_detection(self.config)
        for event in self.turns.feed(speech, turn):
            assert turn is not None
            if event.kind == "started":
                self._speech_item_id = new_id("item")
                self._speech_start_ms = event.audio_ms
                effects.events.append(self.events.speech_started(event.audio_ms, self._speech_item_id))
                if self.response is not None and turn.get("interrupt_response", True):
                    effects.extend(self._close_response("cancelled", "turn_detected"))
                continue
            item_id = self._speech_item_id or new_id("item")
            self._speech_item_id = None
            effects.events.append(self.events.speech_stopped(event.audio_ms, item_id))
            effects.extend(
                self._commit_user_audio(item_id, self.input_audio.take(self._speech_start_ms, event.audio_ms))
            )
            if turn.get("create_response", True):
                if self.response is None:
                    effects.extend(self._open_response({}))
                else:  # a response goes on (interrupt_response false): answer this turn after it
                    self._answer_after_response = True
        return effects

    def close(self) -> Effects:
        """The client is gone: finish what is open so that nothing said is lost."""
        if self.response is None:
            return Effects()
        return self._close_response("cancelled", "client_cancelled")

    @property
    def wants_output(self) -> bool:
        """True while a response is open: the model must keep stepping even without client audio."""
        return self.response is not None

    @property
    def wants_speech(self) -> bool:
        """Turn detection is on: the engine must score the client's audio with its VAD."""
        return session_config.turn_detection(self.config) is not None

    # --- session ------------------------------------------------------------------------------

    def _session_update(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        update = event["session"]  # present and an object: checked by client_events.validate
        config = session_config.apply_update(self.config, update, self.dialect)
        limits.check_instructions(update.get("instructions"), self.limits, "session.instructions")
        limits.check_tools(update.get("tools"), self.limits, "session.tools")
        limits.check_session_rest(config)
        changed = config != self.config
        self.config = config
        self._log_ignored(update)
        return Effects(events=[self.events.session_updated(config)], records=self._store_config() if changed else [])

    def _store_config(self) -> list[records.Record]:
        """The session's configuration to store, while fewer than max_stored_configs have been."""
        if self._configs_stored >= self.limits.max_stored_configs:
            return []
        self._configs_stored += 1
        return [records.ConfigAccepted(session=self.config)]

    def _log_ignored(self, update: dict[str, Any]) -> None:
        flat = json.dumps(update)
        for name in ("voice", "speed", "tools", "tracing", "noise_reduction", "temperature", "instructions"):
            if f'"{name}"' in flat and name not in _IGNORED_SETTINGS:
                _IGNORED_SETTINGS.add(name)
                log.info("session setting %r is accepted and stored, but Moshi does not act on it", name)

    # --- input audio --------------------------------------------------------------------------

    def _append(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        samples = decode_pcm16(event["audio"])
        self.input_audio.append(samples)
        return Effects(frames=self._frames.push(samples))

    def _commit(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        buffered_ms = self.input_audio.buffered_samples * 1000 // SAMPLE_RATE
        if buffered_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        self._end_detected_speech()  # the client committed this speech itself
        return self._commit_user_audio(new_id("item"), self.input_audio.take())

    def _end_detected_speech(self) -> None:
        """A manual commit or clear ends the speech turn detection was following, so that its stop
        does not commit a second (empty) item later."""
        self.turns.speaking = False
        self._speech_item_id = None

    @property
    def responding(self) -> bool:
        """A response is open (the console shows the session as responding)."""
        return self.response is not None

    def input_dropped(self, samples: int) -> None:
        """Frames the model never got (input queue full): they leave the audio clock too."""
        self.input_audio.forget_latest(samples)

    def _commit_user_audio(self, item_id: str, audio: np.ndarray) -> Effects:
        """A user turn becomes an item: committed, the item entering the conversation, transcription."""
        item = user_audio_item(item_id)
        previous = self.conversation.insert(item)  # the server's item: the oldest leaves when full
        effects = Effects(events=[self.events.input_audio_buffer_committed(item_id, previous)])
        effects.events.extend(self.events.item_entered(item, previous))
        effects.records.append(self.conversation.record(item, audio_ms=audio.size * 1000 // SAMPLE_RATE))
        transcription = self.config["audio"]["input"]["transcription"]
        if transcription is not None and audio.size:
            effects.transcriptions.append(
                TranscriptionRequest(
                    item_id=item_id,
                    audio=audio,
                    model=transcription.get("model") or "",
                    language=transcription.get("language"),
                    prompt=transcription.get("prompt"),
                )
            )
        return effects

    def transcription_completed(self, result: TranscriptionOutcome) -> Effects:
        """The ASR service's text for a user item: the event, the item's transcript, the record."""
        if result.error is None:
            event = self.events.transcription_completed(result.item_id, result.text, result.audio_seconds)
            self.conversation.transcribed(result.item_id, result.text)
        else:
            event = self.events.transcription_failed(result.item_id, result.error_code, result.error)
        return Effects(events=[event], records=[result])

    def _clear(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        self.input_audio.clear()
        self.input_audio.forget_latest(self._frames.clear())
        self._end_detected_speech()
        return Effects(events=[self.events.input_audio_buffer_cleared()])

    # --- conversation items -------------------------------------------------------------------

    def _item_create(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        declared = type(getattr(model, "item", None)).model_fields if model is not None else {}
        item = client_item(event["item"], declared, self.limits)
        previous = self.conversation.insert(item, event.get("previous_item_id"), from_client=True)
        effects = Effects(events=self.events.item_entered(item, previous))
        effects.records.append(self.conversation.record(item))
        return effects

    def _item_retrieve(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        snapshot = self.conversation.snapshot(event["item_id"])
        if self.response is not None and self.response.item_id == event["item_id"]:
            snapshot = self.response.item("in_progress", partial=True)  # what has been said so far
        return Effects(events=[self.events.item_retrieved(snapshot)])

    def _item_truncate(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        item_id = event["item_id"]
        entry = self.conversation.entry(item_id, "item_truncate_invalid_item_id", "truncating")
        live = self.response if self.response is not None and self.response.item_id == item_id else None
        # Checked types (client_events.validate): content_index and audio_end_ms are integers.
        heard = entry.truncate(event["content_index"], event["audio_end_ms"], live)
        if live is not None:
            live.heard = heard  # its final item and its record say what the client heard
        return Effects(
            events=[self.events.item_truncated(item_id, 0, event["audio_end_ms"])],
            records=[records.ItemTruncated(item_id=item_id, audio_end_ms=event["audio_end_ms"], heard_text=heard)],
        )

    def _item_delete(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        self.conversation.delete(event["item_id"])
        return Effects(
            events=[self.events.item_deleted(event["item_id"])], records=[records.ItemDeleted(event["item_id"])]
        )

    # --- responses ----------------------------------------------------------------------------

    def _response_create(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        params = event.get("response") or {}
        check_request(params, self.response, self.limits)
        return self._open_response(params)

    def _response_cancel(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response.id):
            raise ProtocolError("response_cancel_not_active", "Cancellation failed: no active response found")
        return self._close_response("cancelled", "client_cancelled")

    def _open_response(self, params: dict[str, Any]) -> Effects:
        self.response = Response.requested(params, self.config, self.dialect, self.conversation_id)
        return open_response(self.events, self.conversation, self.response)

    def _close_response(self, status: str, reason: str | None) -> Effects:
        response, self.response = self.response, None
        assert response is not None
        return close_response(self.events, self.conversation, response, status, reason)
