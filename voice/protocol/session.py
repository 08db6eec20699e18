"""RealtimeSession: the protocol state machine of one connection.

It takes client events (raw JSON text) and model output frames and returns Effects: server events
to send, audio frames for the model, and records to store. `receive` never raises, whatever it is
given: every ProtocolError (input checked by type before use, see validation.py; a budget of
limits.py exceeded) becomes an `error` event naming the offending client event, anything else a
generic `server_error` (and a logged traceback), and the session goes on.

Why it exists: it is the one place that decides *when* things happen (an event is accepted, a turn
ends, a response opens or closes). What an item holds lives in conversation.py, what a response
holds and what opening or closing one sends in responses.py, the checks in validation.py and
limits.py; the user's audio, turns and their transcription in user_turns.py, and the responses
the companion model answers in companion_responses.py.
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
from .audio import rms
from .companion import CompanionOutcome
from .companion_responses import CompanionResponses
from .conversation import Conversation, client_item
from .dialect import Dialect
from .effects import Effects
from .errors import ProtocolError
from .events import EventFactory
from .ids import new_id
from .input_buffer import InputAudioBuffer
from .limits import SessionLimits, TokenBucket
from .records import TranscriptionOutcome
from .responses import Response, ResponsePolicy, check_request, close_response, open_response, output_events
from .user_turns import UserTurns

log = logging.getLogger(__name__)

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
    # A companion model is configured (COMPANION_BASE_URL): responses that need instructions or
    # tools followed are answered through it (docs/protocol-mapping.md, "Tools through the companion").
    companion: bool = False
    # An ASR service is configured: with a companion, every committed turn is transcribed (the
    # companion reads the user's words), also when the client did not ask for transcription.
    transcribe: bool = True


class RealtimeSession:
    """One connection's protocol state: the coordinator of its conversation, user turns and responses."""

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
        self._answer_after_response = False
        self.user_turns = UserTurns(
            self.events, self.conversation, transcribe_all=options.companion and options.transcribe
        )
        self.companion_responses = CompanionResponses(
            self.events,
            self.conversation,
            self.policy,
            self.user_turns.transcriptions,
            self._close_response,
            enabled=options.companion,
        )
        self._handlers: dict[str, Handler] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": lambda event, model: self.user_turns.append(event["audio"]),
            "input_audio_buffer.commit": lambda event, model: self.user_turns.commit(self.config),
            "input_audio_buffer.clear": lambda event, model: self.user_turns.clear(),
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
        *,
        forced: bool = False,
        forced_left: int = 0,
    ) -> Effects:
        """One 80 ms tick of the model: what it heard (VAD scores) and what it said.

        ``text`` is a text piece (None for padding) and ``pcm`` the model's audio (None before its
        first frame); ``speech`` scores each 32 ms window of the client's audio in this frame.
        ``forced``: ``text`` is the next piece of text the session asked Moshi to say
        (Effects.speak), and ``forced_left`` how many forced tokens are still to be said.
        Model output reaches the client only inside a response: one opened by `response.create`
        or by turn detection when the user stops speaking.
        """
        effects = Effects()
        if client_audio:
            effects.extend(self._detect_turns(speech))
        response = self.response
        if response is None:
            return effects
        if response.phase in ("transcribing", "thinking"):
            # The companion has not answered yet: nothing of Moshi's own goes out in this response.
            effects.extend(self.companion_responses.tick(response, self.config))
        elif pcm is not None or text is not None:
            effects.extend(self._output(response, text, pcm, forced, forced_left))
        else:
            return effects
        if self.response is None and self._answer_after_response:
            self._answer_after_response = False
            effects.extend(self._open_response({}))
        return effects

    def _output(
        self, response: Response, text: str | None, pcm: np.ndarray | None, forced: bool, forced_left: int
    ) -> Effects:
        """One frame of output inside a response: its events, and the response's end when it comes."""
        effects = Effects()
        if response.phase == "speaking":
            # Only the companion's words, as Moshi says them, make the transcript.
            effects.events.extend(output_events(self.events, response, text if forced else None, pcm))
            done = response.observe_forced(forced, forced_left, self.policy)
        else:
            active = text is not None or (pcm is not None and rms(pcm) > self.policy.activity_rms)
            effects.events.extend(output_events(self.events, response, text, pcm))
            done = response.observe(active, self.policy)
        if done or response.over_time_limit(self.policy):
            effects.extend(self._close_response("completed", None))
        elif response.over_token_budget():
            effects.extend(self._close_response("incomplete", "max_output_tokens"))
        return effects

    def _detect_turns(self, speech: Sequence[float]) -> Effects:
        """Turn detection: speech_started (barging in on a response), speech_stopped, commit, respond."""
        effects = Effects()
        turn = session_config.turn_detection(self.config)
        for event in self.user_turns.feed(speech, turn):
            assert turn is not None
            if event.kind == "started":
                effects.extend(self.user_turns.speech_started(event.audio_ms))
                if self.response is not None and turn.get("interrupt_response", True):
                    effects.extend(self._close_response("cancelled", "turn_detected"))
                continue
            effects.extend(self.user_turns.speech_stopped(event.audio_ms, self.config))
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
        names = ["voice", "speed", "tracing", "noise_reduction", "temperature"]
        if not self.options.companion:  # with one, the companion follows them
            names += ["tools", "instructions"]
        for name in names:
            if f'"{name}"' in flat and name not in _IGNORED_SETTINGS:
                _IGNORED_SETTINGS.add(name)
                log.info("session setting %r is accepted and stored, but Moshi does not act on it", name)

    # --- user turns (user_turns.py) -----------------------------------------------------------

    @property
    def input_audio(self) -> InputAudioBuffer:
        """The client's audio kept for commits: owned by the user turns, still read here (tests)."""
        return self.user_turns.input_audio

    @property
    def responding(self) -> bool:
        """A response is open (the console shows the session as responding)."""
        return self.response is not None

    def input_dropped(self, samples: int) -> None:
        """Frames the model never got (input queue full): they leave the audio clock too."""
        self.user_turns.input_dropped(samples)

    def transcription_completed(self, result: TranscriptionOutcome) -> Effects:
        """The ASR service's text for a user item: the event (when the client asked for it), the
        item's transcript, the record; and a companion-driven response waiting for these words asks."""
        effects = self.user_turns.transcribed(result, self.config)
        response = self.response
        if response is not None and response.phase == "transcribing":
            response.awaiting.discard(result.item_id)
            if not response.awaiting:
                effects.extend(self.companion_responses.ask(response, self.config))
        return effects

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
        check_request(params, self.response, self.limits, companion=self.options.companion)
        return self._open_response(params)

    def _response_cancel(self, event: dict[str, Any], model: pydantic.BaseModel | None) -> Effects:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response.id):
            raise ProtocolError("response_cancel_not_active", "Cancellation failed: no active response found")
        return self._close_response("cancelled", "client_cancelled")

    def _open_response(self, params: dict[str, Any]) -> Effects:
        response = Response.requested(params, self.config, self.dialect, self.conversation_id)
        self.response = response
        if not self.companion_responses.driven(params, self.config):
            return open_response(self.events, self.conversation, response)
        return self.companion_responses.open(response, params, self.config)

    def _close_response(self, status: str, reason: str | None, error: dict[str, Any] | None = None) -> Effects:
        response, self.response = self.response, None
        assert response is not None
        effects = close_response(self.events, self.conversation, response, status, reason, error)
        if response.unsaid:
            effects.hush = True  # what Moshi was still to say of it goes unsaid
        self.companion_responses.closed(response)
        return effects

    # --- the companion (companion_responses.py) ------------------------------------------------

    def companion_completed(self, outcome: CompanionOutcome) -> Effects:
        """The companion's answer: tool calls become function_call items, text is what Moshi says
        next in this response, an error fails it. Stored in any case; an answer for a response that
        has closed meanwhile (cancelled, barged in on) goes no further."""
        effects = self.companion_responses.returned(outcome)
        response = self.response
        if response is None or response.phase != "thinking" or response.request_id != outcome.request_id:
            log.info("session %s: companion answer %s came for no open response", self.session_id, outcome.request_id)
            return effects
        effects.extend(self.companion_responses.answered(response, outcome))
        return effects
