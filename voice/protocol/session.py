"""RealtimeSession: the protocol state machine of one connection.

It takes client events (raw JSON text) and model output frames and returns Effects: server events
to send, audio frames for the model, and records to store. `receive` never raises, whatever it is
given: every ProtocolError (input checked by type before use, see validation.py; a budget of
limits.py exceeded) becomes an `error` event naming the offending client event, anything else a
generic `server_error` (and a logged traceback), and the session goes on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic

from . import client_events, limits, records, session_config, validation
from .audio import FRAME_MS, SAMPLE_RATE, FrameAssembler, decode_pcm16, encode_pcm16, rms
from .conversation import Conversation
from .dialect import Dialect
from .effects import Effects, TranscriptionRequest
from .errors import ProtocolError
from .events import EventFactory
from .ids import new_id
from .input_buffer import InputAudioBuffer
from .limits import SessionLimits, TokenBucket
from .records import TranscriptionOutcome
from .responses import Response, ResponsePolicy
from .turn_detection import TurnDetector

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100
# Ids a client gives its items are stored in a column of this size (transcripts.models).
MAX_ITEM_ID_LENGTH = 64

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
        self._frames = FrameAssembler()
        self.turns = TurnDetector()
        self._speech_item_id: str | None = None
        self._speech_start_ms = 0
        self._answer_after_response = False
        self.input_audio = InputAudioBuffer()
        self._positions = 0
        # Text of responses whose audio the client truncated, so their stored text is what was heard.
        self._heard: dict[str, str] = {}
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
        if response.audio and pcm is not None:
            effects.events.append(self.events.audio_delta(response.ref, encode_pcm16(pcm)))
        if text:
            response.text_tokens += 1
            response.pieces.append((response.frames, text))
            if response.audio:
                effects.events.append(self.events.transcript_delta(response.ref, text))
            else:
                effects.events.append(self.events.text_delta(response.ref, text))
        if response.observe(active, self.policy) or response.over_time_limit(self.policy):
            effects.extend(self._close_response("completed", None))
        elif response.over_token_budget():
            effects.extend(self._close_response("incomplete", "max_output_tokens"))
        if self.response is None and self._answer_after_response:
            self._answer_after_response = False
            effects.extend(self._open_response(metadata=None, conversation=True, overrides={}))
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
                    effects.extend(self._open_response(metadata=None, conversation=True, overrides={}))
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

    # --- parsing ------------------------------------------------------------------------------

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

    def input_dropped(self, samples: int) -> None:
        """Frames the model never got (input queue full): they leave the audio clock too."""
        self.input_audio.forget_latest(samples)

    def _commit_user_audio(self, item_id: str, audio: np.ndarray) -> Effects:
        """A user turn becomes an item: committed, the item entering the conversation, transcription."""
        buffered_ms = audio.size * 1000 // SAMPLE_RATE
        item = {
            "id": item_id,
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
            "object": "realtime.item",
        }
        previous = self.conversation.insert(item)  # the server's item: the oldest leaves when full
        effects = Effects(events=[self.events.input_audio_buffer_committed(item_id, previous)])
        effects.events.extend(self.events.item_entered(item, previous))
        effects.records.append(self._item_record(item, audio_ms=buffered_ms))
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
            with contextlib.suppress(ProtocolError):  # the client may have deleted the item meanwhile
                item = self.conversation.get(result.item_id, "invalid_value", "transcribing")
                for part in item.get("content", []):
                    if part.get("type") == "input_audio":
                        part["transcript"] = result.text
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
        item = dict(event["item"])
        if not item.get("id"):
            item["id"] = new_id("item")
        if len(item["id"]) > MAX_ITEM_ID_LENGTH:
            raise validation.string_too_long(("item", "id"), item["id"], MAX_ITEM_ID_LENGTH)
        # Filled in as OpenAI does, where the item's type has the field (MCP items have neither).
        declared = type(getattr(model, "item", None)).model_fields if model is not None else {}
        if "object" in declared:
            item.setdefault("object", "realtime.item")
        if "status" in declared:
            item.setdefault("status", "completed")
        limits.check_item_text(item, self.limits)
        previous = self.conversation.insert(item, event.get("previous_item_id"), from_client=True)
        effects = Effects(events=self.events.item_entered(item, previous))
        effects.records.append(self._item_record(item))
        return effects

    def _item_retrieve(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        snapshot = self.conversation.snapshot(event["item_id"])
        if self.response is not None and self.response.item_id == event["item_id"]:
            snapshot = self.response.item("in_progress", partial=True)  # what has been said so far
        return Effects(events=[self.events.item_retrieved(snapshot)])

    def _item_truncate(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        item_id = event["item_id"]
        item = self.conversation.get(item_id, "item_truncate_invalid_item_id", "truncating")
        if item.get("role") != "assistant":
            raise ProtocolError("invalid_value", "Only assistant message items can be truncated.", param="item_id")
        if event["content_index"] != 0:
            raise ProtocolError(
                "invalid_value", "Invalid value for 'content_index': this item has one part.", param="content_index"
            )
        audio_end_ms: int = event["audio_end_ms"]  # an integer: checked by client_events.validate
        response = self.response if self.response and self.response.item_id == item_id else None
        audio_ms = response.audio_ms if response else int(item.get("_audio_ms", 0))
        if audio_end_ms < 0 or audio_end_ms > audio_ms:
            raise ProtocolError(
                "invalid_value",
                f"Audio content of {audio_ms}ms is shorter than {audio_end_ms}ms.",
                param="audio_end_ms",
            )
        if response is not None:
            heard = response.heard_text(audio_end_ms)
        else:
            heard = self._heard_text(item, audio_end_ms)
        self._heard[item_id] = heard
        for part in item.get("content", []):
            if "transcript" in part:
                part["transcript"] = heard
        return Effects(
            events=[self.events.item_truncated(item_id, 0, audio_end_ms)],
            records=[records.ItemTruncated(item_id=item_id, audio_end_ms=audio_end_ms, heard_text=heard)],
        )

    @staticmethod
    def _heard_text(item: dict[str, Any], audio_end_ms: int) -> str:
        pieces: list[tuple[int, str]] = item.get("_pieces", [])
        return "".join(text for frame, text in pieces if frame * FRAME_MS < audio_end_ms)

    def _item_delete(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        self.conversation.delete(event["item_id"])
        return Effects(
            events=[self.events.item_deleted(event["item_id"])], records=[records.ItemDeleted(event["item_id"])]
        )

    def _item_record(
        self, item: dict[str, Any], *, audio_ms: int = 0, response_id: str | None = None
    ) -> records.ItemStored:
        self._positions += 1
        content = [dict(part) for part in item.get("content", [])]
        # Stored exactly as streamed (leading spaces included): the record is what was said.
        texts = [str(part.get("text") or part.get("transcript") or "") for part in content]
        text = " ".join(t for t in texts if t) or str(item.get("output") or item.get("arguments") or "")
        return records.ItemStored(
            item_id=item["id"],
            item_type=item.get("type", "message"),
            role=item.get("role", ""),
            status=item.get("status", "completed"),
            text=self._heard.get(item["id"], text),
            position=self._positions,
            response_id=response_id,
            audio_ms=audio_ms,
            content=content,
        )

    # --- responses ----------------------------------------------------------------------------

    def _response_create(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        if self.response is not None:
            raise ProtocolError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = event.get("response") or {}
        if params.get("tool_choice") == "required":
            raise ProtocolError(
                "invalid_value",
                "tool_choice 'required' cannot be honoured: Moshi does not call tools.",
                param="response.tool_choice",
            )
        for key in ("max_output_tokens", "max_response_output_tokens"):
            tokens = params.get(key, "inf")
            if tokens != "inf" and not 1 <= tokens <= 4096:
                raise ProtocolError(
                    "invalid_value",
                    f"Invalid value for 'response.{key}': expected an integer from 1 to 4096 or 'inf'.",
                    param=f"response.{key}",
                )
        limits.check_instructions(params.get("instructions"), self.limits, "response.instructions")
        limits.check_tools(params.get("tools"), self.limits, "response.tools")
        limits.check_metadata(params.get("metadata"), self.limits, "response.metadata")
        return self._open_response(
            metadata=params.get("metadata"),
            conversation=params.get("conversation", "auto") != "none",
            overrides=params,
        )

    def _response_cancel(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response.id):
            raise ProtocolError("response_cancel_not_active", "Cancellation failed: no active response found")
        return self._close_response("cancelled", "client_cancelled")

    def _open_response(
        self, *, metadata: dict[str, Any] | None, conversation: bool, overrides: dict[str, Any]
    ) -> Effects:
        modalities = (
            overrides.get("output_modalities") or overrides.get("modalities") or self.config["output_modalities"]
        )
        response = Response(
            dialect=self.dialect,
            audio="audio" in modalities,
            conversation_id=self.conversation_id if conversation else None,
            metadata=metadata,
            max_output_tokens=overrides.get(
                "max_output_tokens", overrides.get("max_response_output_tokens", self.config["max_output_tokens"])
            ),
            session=self.config,
        )
        self.response = response
        item = response.item("in_progress")
        effects = Effects(events=[self.events.response_created(response.body("in_progress", None, []))])
        effects.events.append(self.events.output_item_added(response.id, 0, item))
        if conversation:
            previous = self.conversation.insert(item)
            effects.events.extend(self.events.item_entered(item, previous))
        effects.events.append(self.events.content_part(False, response.ref, response.part(final=False)))
        return effects

    def _close_response(self, status: str, reason: str | None) -> Effects:
        response = self.response
        assert response is not None
        self.response = None
        ref = response.ref
        events: list[dict[str, Any]] = []
        if response.audio:
            events.append(self.events.audio_done(ref))
            events.append(self.events.transcript_done(ref, response.transcript))
        else:
            events.append(self.events.text_done(ref, response.transcript))
        events.append(self.events.content_part(True, ref, response.part(final=True)))
        item = response.item("completed" if status == "completed" else "incomplete")
        if response.item_id in self._heard:
            for part in item["content"]:
                if "transcript" in part:
                    part["transcript"] = self._heard[response.item_id]
        in_conversation = response.conversation_id is not None and response.item_id in self.conversation
        previous = None
        if in_conversation:
            stored = self.conversation.get(response.item_id, "invalid_value", "finishing")
            stored.clear()
            stored.update(copy.deepcopy(item))  # a later truncation must not rewrite the events below
            previous = self.conversation.previous_id(response.item_id)
            events.extend(self.events.item_done(self.conversation.snapshot(response.item_id), previous))
            stored["_audio_ms"] = response.audio_ms
            stored["_pieces"] = list(response.pieces)
        events.append(self.events.output_item_done(response.id, 0, item))
        details = {"type": status, "reason": reason} if status != "completed" else None
        events.append(self.events.response_done(response.body(status, details, [item])))
        effects = Effects(events=events)
        if response.conversation_id is not None:
            effects.records.append(self._item_record(item, audio_ms=response.audio_ms, response_id=response.id))
        return effects
