"""LiveSession: the Live API's protocol state machine for one connection, with no I/O.

The counterpart of voice.protocol.RealtimeSession, driven the same way by the connection runtime:
client events (JSON text), model frames (one per 80 ms step) and ASR results go in, Effects come
out (server events, 24 kHz frames for the model, ASR requests, records). `receive` never raises:
a client's mistake is an `error` event naming the parameter and the client's `event_id`, anything
else a generic `server_error` (logged). Unlike Realtime there are no turns and no responses: from
`session.start` to the close the model steps every frame and each frame is one output delta.
With a companion model configured (LiveOptions.companion), client and Responses delegation are
emulated by delegation.py: companion requests go out as Effects.companion, answers come back
through `companion_completed`, and text for Moshi to say goes out as Effects.speak.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from voice.protocol.audio import FRAME_MS, FRAME_SAMPLES, FrameAssembler
from voice.protocol.companion import CompanionOutcome
from voice.protocol.effects import Effects, TranscriptionRequest
from voice.protocol.errors import ProtocolError
from voice.protocol.ids import new_id
from voice.protocol.records import TranscriptionOutcome

from . import client_events, config, records
from .audio import DEFAULT_FORMAT, InputDecoder, OutputEncoder, decode_pcm16_24k
from .config import LiveOptions
from .delegation import Delegator
from .events import LiveEvents
from .output import Fixture, OutputGate
from .transcripts import Segment, Segmenter, TranscriptMerger

log = logging.getLogger(__name__)

_SERVER_ERROR = ProtocolError(
    "server_error", "The server had an error while processing your request.", type="server_error"
)
NOT_APPLIED = (
    "Moshi hears and speaks audio only: appended instructions and thinking are acknowledged and stored "
    "with the conversation, but they do not steer its speech."
)
NOT_APPLIED_SILENT = (
    "Moshi hears and speaks audio only: appended instructions, thinking and commentary are acknowledged "
    "and stored with the conversation, but they do not steer its speech."
)
COMPANION_CONTEXT = (
    "Appended instructions and thinking are given to the delegation model as context; they do not steer "
    "Moshi's own speech."
)
MAX_HEARD_FRAMES = 256  # client frames queued for the model, kept to give the ASR what it heard

Handler = Callable[[dict[str, Any], str | None], Effects]


class LiveSession:
    def __init__(self, options: LiveOptions | None = None) -> None:
        self.options = options or LiveOptions()
        self.events = LiveEvents()
        self.session_id = new_id("live")
        self.conversation_id = new_id("conv")
        self.resource: dict[str, Any] | None = None
        self.model_type: str | None = None  # sft / base / pretrain, once started
        self.closed = False
        self.close_code: int | None = None  # set when the runtime should close the socket after sending
        self.close_reason: records.CloseReason | None = None
        self.frames = 0  # model frames so far: the session clock is 80 ms each
        self.muted = False
        self.fixture: Fixture | None = None
        self._decoder = InputDecoder(DEFAULT_FORMAT)
        self._encoder = OutputEncoder(DEFAULT_FORMAT)
        self._assembler = FrameAssembler()
        self._heard: deque[np.ndarray] = deque(maxlen=MAX_HEARD_FRAMES)
        self._gate = OutputGate(self.options.policy)
        self._segmenter = Segmenter(
            self.options.vad_threshold, self.options.segment_silence_ms, self.options.max_segment_ms
        )
        self._merger = TranscriptMerger(self.options.max_transcript_hold_ms)
        self._transcribing: dict[str, Segment] = {}
        self._open_segment_id: str | None = None
        self._next_usage_ms = self.options.usage_interval_ms
        self._told_not_applied = False
        transcribes = self.options.transcription_model is not None
        self._delegator = Delegator(self.events, self.options.wall, transcribes) if self.options.companion else None
        append = self._text_append
        self._handlers: dict[str, Handler] = {
            "session.start": self._start,
            "session.update": self._update,
            "session.input_audio.append": self._audio_append,
            "session.input_audio.mute": lambda e, i: self._mute(True, i),
            "session.input_audio.unmute": lambda e, i: self._mute(False, i),
            "session.output_audio.fixture.play": self._fixture_play,
            "session.instructions.append": lambda e, i: append("instructions", e, i),
            "session.thinking.append": lambda e, i: append("thinking", e, i),
            "session.commentary.append": lambda e, i: append("commentary", e, i),
            "decision.create": self._unsupported,
            "decision.item.create": self._unsupported,
            "decision.item.delete": self._unsupported,
            "response.item.create": self._response,
            "response.create": self._response,
            "session.close": lambda e, i: self._finish("close_requested", i),
        }

    # --- entry points -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.resource is not None

    @property
    def now_ms(self) -> int:
        return self.frames * FRAME_MS

    @property
    def wants_output(self) -> bool:
        """From session.start to the close the model steps every frame, on silence if need be."""
        return self.started and not self.closed

    @property
    def wants_speech(self) -> bool:
        """Input transcription is on: its segmenter needs the VAD's scores of the client's audio."""
        return self.options.transcription_model is not None

    @property
    def responding(self) -> bool:
        """The model is speaking (its output is not the silence gate's zeros): the console's state."""
        return self._gate.speaking

    def start(self) -> Effects:
        """The Live API says nothing before the client's `session.start`."""
        return Effects()

    def receive(self, text: str | bytes) -> Effects:
        """One client event; never raises."""
        event_id: str | None = None
        try:
            event = client_events.parse(text)
            event_id = client_events.event_id(event)
            if self.closed:
                return Effects(client_event_id=event_id)  # nothing after session.closed
            if event.get("type") == "session.update":
                config.check_immutable(event.get("session"))
            if (event.get("type"), self.started) in (("session.start", False), ("session.update", True)):
                config.check_hosted_tools(event)
            client_events.check(event)
            if not self.started and event["type"] != "session.start":
                raise ProtocolError(
                    "session_not_started", "Send session.start and wait for session.started before other commands."
                )
            effects = self._handlers[event["type"]](event, event_id)
        except ProtocolError as exc:
            effects = Effects(events=[self.events.error(exc, event_id)])
        except Exception:
            log.exception("live session %s: client event %r failed", self.session_id, event_id)
            effects = Effects(events=[self.events.error(_SERVER_ERROR, event_id)])
        effects.client_event_id = event_id
        return effects

    def model_output(
        self,
        text: str | None,
        pcm: np.ndarray | None,
        speech: Sequence[float] = (),
        client_audio: bool = False,
        *,
        forced: bool = False,
        forced_left: int = 0,
    ) -> Effects:
        """One 80 ms model frame: what the model heard (VAD scores, whether it was client audio) and said.

        Always one `session.output_audio.delta` (the model's speech, silence, or the fixture), then
        any transcript fragments that may go, usage every few seconds, and the close at expiry.
        ``forced``: ``text`` is the next piece of forced text (Effects.speak: commentary, a
        delegated reply), sent as it is; ``forced_left``: forced tokens still to be said, during
        which the output is speech even between words.
        """
        if not self.wants_output:
            return Effects()
        effects = Effects()
        heard = self._heard.popleft() if client_audio and self._heard else None
        if client_audio and self.options.transcription_model is not None:
            for segment in self._segmenter.feed(self.now_ms, speech, heard):
                effects.extend(self._segment_done(segment))
            segment = self._segmenter.open
            if segment is not None and segment.id != self._open_segment_id:
                self._open_segment_id = segment.id
                self._merger.segment_opened(segment.id, segment.start_ms, self.now_ms)
        was_speaking = self._gate.speaking
        if self.fixture is not None:
            frame, text = self.fixture.next_frame(), None
        else:
            frame = self._gate.frame(text, pcm, hold=forced_left > 0)
        effects.events.append(self.events.audio_delta(self._encoder.encode(frame)))
        if self.fixture is not None and self.fixture.finished:
            self.fixture = None
            effects.events.append(self.events.ack("session.output_audio.fixture.played", None))
        start = (self.frames + self.options.text_offset_frames) * FRAME_MS
        self.frames += 1
        if text and not forced and self._delegator is not None:
            self._delegator.speech(start, text)  # forced text is in its history as what it came from
        ready = (
            self._merger.output(records.Fragment("assistant", text, start, start + FRAME_MS), self.now_ms)
            if text
            else self._merger.release(self.now_ms)
        )
        if was_speaking and not self._gate.speaking:  # the burst ends: its words go with it
            ready += self._merger.burst_ended(self.now_ms)
        effects.extend(self._send(ready))
        if self._delegator is not None and self._delegator.acks:
            effects.speak += self._delegator.due(self.now_ms)
        if self.now_ms >= self._next_usage_ms:
            self._next_usage_ms += self.options.usage_interval_ms
            effects.events.append(self._usage_event())
        if self.now_ms >= self.options.max_duration_s * 1000:
            effects.extend(self._finish("expired", None))
        return effects

    def transcription_completed(self, outcome: TranscriptionOutcome) -> Effects:
        """The ASR's text for a user segment (``outcome.item_id`` is the segment id it was asked with)."""
        segment = self._transcribing.pop(outcome.item_id, None)
        if segment is None or self.closed:
            return Effects(records=[outcome])
        if outcome.error is not None or not outcome.text.strip():
            ready = self._merger.segment_dropped(segment.id, self.now_ms)
        else:
            ready = self._merger.user_text(segment.id, outcome.text, segment.start_ms, segment.end_ms, self.now_ms)
        effects = self._send(ready)
        effects.records.insert(0, outcome)
        if self._delegator is not None and outcome.error is None and outcome.text.strip():
            effects.extend(self._delegator.user_turn(segment.start_ms, segment.end_ms, outcome.text, self.now_ms))
        return effects

    def companion_completed(self, outcome: CompanionOutcome) -> Effects:
        """The companion's answer to a request these effects asked for: stored, and turned into
        delegation events (and speech) while the session lives."""
        effects = Effects(records=[outcome])
        if self._delegator is not None and self.wants_output:
            effects.extend(self._delegator.completed(outcome, self.now_ms))
        return effects

    def input_dropped(self, samples: int) -> None:
        """Client audio the model never got (its inbox was full), in 24 kHz samples as the Realtime
        session counts it: the ASR must not get those frames either."""
        for _ in range(min(samples // FRAME_SAMPLES, len(self._heard))):
            self._heard.pop()

    def expire(self) -> Effects:
        """The runtime's own expiry (a wall clock): `session.closed` with reason `expired`."""
        return self._finish("expired", None) if self.wants_output else Effects()

    def close(self) -> Effects:
        """The connection is gone without session.close: nothing to send, the close to store."""
        if not self.wants_output:
            return Effects()
        self.closed = True
        self.close_reason = "connection_lost"
        assert self.resource is not None
        return Effects(records=[records.LiveClosed("connection_lost", self.now_ms // 1000, self.frames, self.resource)])

    # --- lifecycle ----------------------------------------------------------------------------

    def _start(self, event: dict[str, Any], event_id: str | None) -> Effects:
        if self.started:
            raise ProtocolError(
                "session_already_started", "The session has already started; session.start is sent once."
            )
        try:
            resource, fmt = config.resolve_start(event["session"], self.options, self.session_id)
        except ProtocolError as exc:
            if exc.code == "invalid_model":
                self.closed, self.close_code = True, 1000
            raise
        self.resource = resource
        self.model_type = self.options.model_type(resource["model"])
        self._decoder, self._encoder = InputDecoder(fmt), OutputEncoder(fmt)
        assert self.model_type is not None
        effects = Effects(
            events=[self.events.session_started(resource, event_id)],
            records=[records.LiveStarted(resource, self.model_type)],
        )
        if self._delegator is not None:
            effects.events += self._delegator.started(resource)
        return effects

    def _update(self, event: dict[str, Any], event_id: str | None) -> Effects:
        assert self.resource is not None
        self.resource = config.apply_update(self.resource, event["session"])
        if self._delegator is not None:
            self._delegator.configure(self.resource)
        return Effects(events=[self.events.session_updated(self.resource, event_id)])

    def _finish(self, reason: records.CloseReason, event_id: str | None) -> Effects:
        assert self.resource is not None
        held = self._merger.flush()
        if reason == "close_requested":
            # The client has already ended its turns (pipecat does before session.close): what was
            # still held is stored with the conversation, not sent to open a turn nobody will end.
            effects = Effects(records=list(held))
        else:
            effects = self._send(held)
        seconds = self.now_ms // 1000
        effects.events.append(self.events.session_closed(reason, self.resource, seconds, event_id))
        effects.records.append(records.LiveClosed(reason, seconds, self.frames, self.resource))
        self.closed, self.close_code, self.close_reason = True, 1000, reason
        return effects

    def _usage_event(self) -> dict[str, Any]:
        ratio = min(self.frames, self.options.context_frames) / self.options.context_frames
        return self.events.usage_updated(self.now_ms // 1000, ratio)

    # --- audio in -----------------------------------------------------------------------------

    def _audio_append(self, event: dict[str, Any], event_id: str | None) -> Effects:
        samples = self._decoder.decode(event["audio"])  # checked even when it is dropped
        if self.muted or self.fixture is not None:
            return Effects()  # the model hears silence; dropped input is not replayed
        frames = self._assembler.push(samples)
        self._heard.extend(frames)
        return Effects(frames=frames)

    def _mute(self, muted: bool, event_id: str | None) -> Effects:
        self.muted = muted
        effects = Effects()
        if muted:
            self._assembler.clear()
            if self._segmenter.open is not None:
                effects.extend(self._segment_done(self._segmenter.close()))
        kind = "session.input_audio.muted" if muted else "session.input_audio.unmuted"
        effects.events.append(self.events.ack(kind, event_id))
        return effects

    def _segment_done(self, segment: Segment) -> Effects:
        audio = segment.audio()
        if not audio.size:
            return self._send(self._merger.segment_dropped(segment.id, self.now_ms))
        self._transcribing[segment.id] = segment
        model = self.options.transcription_model or ""
        request = TranscriptionRequest(segment.id, audio, model, self.options.transcription_language, None)
        return Effects(transcriptions=[request])

    def _fixture_play(self, event: dict[str, Any], event_id: str | None) -> Effects:
        if self.fixture is not None:
            raise ProtocolError("fixture_active", "An audio fixture is already playing; wait for fixture.played.")
        samples = decode_pcm16_24k(event["audio"])
        if not samples.size or Fixture.too_long(samples):
            raise ProtocolError(
                "invalid_value", "Invalid value for 'audio': a fixture holds 1 sample to 30 s of audio.", param="audio"
            )
        self.fixture = Fixture(samples)
        self._gate.reset()
        self._assembler.clear()
        return Effects(events=[self.events.ack("session.output_audio.fixture.playing", event_id)])

    # --- text and delegation ------------------------------------------------------------------

    def _text_append(self, kind: records.AppendKind, event: dict[str, Any], event_id: str | None) -> Effects:
        assert self.resource is not None
        if self.fixture is not None:
            raise ProtocolError("fixture_active", f"session.{kind}.append is rejected while an audio fixture plays.")
        delegation_id = event["delegation_id"]
        known = self._delegator is not None and delegation_id is not None and self._delegator.knows(delegation_id)
        if delegation_id is not None and not known:
            responses = self.resource["delegation"].get("type") == "responses"
            raise ProtocolError(
                "invalid_value",
                "Non-null delegation_id is not accepted with Responses delegation."
                if responses
                else f"Unknown delegation_id '{delegation_id[:64]}': no such delegation in this session.",
                param="delegation_id",
            )
        content = event["content"]
        if (tokens := (len(content.encode("utf-8")) + 3) // 4) > self.options.max_append_tokens:
            raise ProtocolError(
                "string_above_max_length",
                f"'content' is about {tokens} tokens, over the limit of {self.options.max_append_tokens}.",
                param="content",
            )
        effects = Effects(
            events=[self.events.appended(kind, self.now_ms, event_id)],
            records=[records.Appended(kind, content, delegation_id, self.now_ms)],
        )
        spoken = kind == "commentary" and self.options.speak_commentary
        if spoken and content.strip():
            effects.speak.append(content.strip())
        if self._delegator is not None:
            self._delegator.appended(kind, content, spoken)
        if not spoken and not self._told_not_applied:
            self._told_not_applied = True
            if self._delegator is not None:
                message = COMPANION_CONTEXT
            else:
                message = NOT_APPLIED if self.options.speak_commentary else NOT_APPLIED_SILENT
            effects.events.append(self.events.info("append_not_applied", message, event_id))
        return effects

    def _unsupported(self, event: dict[str, Any], event_id: str | None) -> Effects:
        raise ProtocolError(
            "unsupported_command",
            f"'{event['type']}' needs the Decisions API, which this server does not offer.",
            param="type",
        )

    def _response(self, event: dict[str, Any], event_id: str | None) -> Effects:
        assert self.resource is not None
        if self.resource["delegation"].get("type") != "responses":
            raise ProtocolError("responses_delegation_required", f"'{event['type']}' requires Responses delegation.")
        if self._delegator is not None:
            if event["type"] == "response.item.create":
                return self._delegator.item_create(event)
            return self._delegator.response_create(event_id)
        raise ProtocolError(
            "no_pending_delegation", "No Responses delegation is waiting for tool results in this session."
        )

    def _send(self, fragments: list[records.Fragment]) -> Effects:
        effects = Effects()
        for fragment in fragments:
            effects.events.append(
                self.events.transcript_delta(fragment.speaker, fragment.text, fragment.start_ms, fragment.end_ms)
            )
            effects.records.append(fragment)
        return effects
