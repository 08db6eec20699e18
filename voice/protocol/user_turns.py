"""The user's side of a Realtime session: input audio, committed turns and their transcription.

Why it exists: RealtimeSession decides *when* things happen (a turn ends, a response opens or is
barged in on); what a user turn is made of is a concern of its own, with state of its own. This
module owns the client's audio (the buffer a commit takes from, the frames for the model), the
speech that turn detection is following, committing a turn as a user audio item, and the turns
sent to the ASR service whose words are not back yet. Whether a turn opens or cancels a response
stays with the session.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .audio import SAMPLE_RATE, FrameAssembler, decode_pcm16
from .conversation import Conversation, user_audio_item
from .effects import Effects, TranscriptionRequest
from .errors import ProtocolError
from .events import EventFactory
from .ids import new_id
from .input_buffer import InputAudioBuffer
from .records import TranscriptionOutcome
from .turn_detection import TurnDetector, TurnEvent

MIN_COMMIT_MS = 100
# Transcriptions this session waits for at most (a result that never comes is forgotten).
_MAX_TRANSCRIBING = 32


class Transcriptions:
    """Committed turns sent to the ASR service and not back yet.

    Kept apart because two concerns read it: the user turn (does the client hear of the result?)
    and a companion-driven response (whose words must it wait for?).
    """

    def __init__(self) -> None:
        # Item id -> whether the client asked for its transcription (False: asked for the
        # companion only, no events).
        self._pending: dict[str, bool] = {}

    def sent(self, item_id: str, visible: bool) -> None:
        self._pending[item_id] = visible
        while len(self._pending) > _MAX_TRANSCRIBING:  # results that never came
            del self._pending[next(iter(self._pending))]

    def returned(self, item_id: str, asked: bool) -> bool:
        """A result is back: whether the client hears of it (``asked``, for one not waited for)."""
        return self._pending.pop(item_id, asked)

    def pending(self) -> set[str]:
        """The items whose words are still to come."""
        return set(self._pending)

    def forget(self, item_ids: Iterable[str]) -> None:
        """Given up on: no later response waits for these either."""
        for item_id in item_ids:
            self._pending.pop(item_id, None)


class UserTurns:
    """The client's input audio and the user turns committed from it (one per session)."""

    def __init__(self, events: EventFactory, conversation: Conversation, *, transcribe_all: bool) -> None:
        self.events = events
        self.conversation = conversation
        # A companion reads the user's words: every turn is transcribed, asked for or not.
        self.transcribe_all = transcribe_all
        self.input_audio = InputAudioBuffer()
        self.turns = TurnDetector()
        self.transcriptions = Transcriptions()
        self._frames = FrameAssembler()
        self._speech_item_id: str | None = None
        self._speech_start_ms = 0

    # --- the client's audio -------------------------------------------------------------------

    def append(self, audio: str) -> Effects:
        """`input_audio_buffer.append`: kept for a commit, and frames for the model."""
        samples = decode_pcm16(audio)
        self.input_audio.append(samples)
        return Effects(frames=self._frames.push(samples))

    def commit(self, config: dict[str, Any]) -> Effects:
        """`input_audio_buffer.commit`: what was appended since the last commit becomes a user turn."""
        buffered_ms = self.input_audio.buffered_samples * 1000 // SAMPLE_RATE
        if buffered_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        self.end_detected_speech()  # the client committed this speech itself
        return self.commit_audio(new_id("item"), self.input_audio.take(), config)

    def clear(self) -> Effects:
        """`input_audio_buffer.clear`: the buffer, a partial frame and the speech followed are dropped."""
        self.input_audio.clear()
        self.input_audio.forget_latest(self._frames.clear())
        self.end_detected_speech()
        return Effects(events=[self.events.input_audio_buffer_cleared()])

    def input_dropped(self, samples: int) -> None:
        """Frames the model never got (input queue full): they leave the audio clock too."""
        self.input_audio.forget_latest(samples)

    # --- turn detection -----------------------------------------------------------------------

    def feed(self, speech: Sequence[float], turn: dict[str, Any] | None) -> list[TurnEvent]:
        """The VAD's scores of one frame of client audio: speech starting or stopping."""
        return self.turns.feed(speech, turn)

    def speech_started(self, audio_ms: int) -> Effects:
        """Turn detection heard speech start: the item it will commit is named now."""
        self._speech_item_id = new_id("item")
        self._speech_start_ms = audio_ms
        return Effects(events=[self.events.speech_started(audio_ms, self._speech_item_id)])

    def speech_stopped(self, audio_ms: int, config: dict[str, Any]) -> Effects:
        """Turn detection heard speech stop: `speech_stopped`, and the speech committed as a turn."""
        item_id = self._speech_item_id or new_id("item")
        self._speech_item_id = None
        effects = Effects(events=[self.events.speech_stopped(audio_ms, item_id)])
        effects.extend(self.commit_audio(item_id, self.input_audio.take(self._speech_start_ms, audio_ms), config))
        return effects

    def end_detected_speech(self) -> None:
        """A manual commit or clear ends the speech turn detection was following, so that its stop
        does not commit a second (empty) item later."""
        self.turns.speaking = False
        self._speech_item_id = None

    # --- committed turns ----------------------------------------------------------------------

    def commit_audio(self, item_id: str, audio: np.ndarray, config: dict[str, Any]) -> Effects:
        """A user turn becomes an item: committed, the item entering the conversation, transcription."""
        item = user_audio_item(item_id)
        previous = self.conversation.insert(item)  # the server's item: the oldest leaves when full
        effects = Effects(events=[self.events.input_audio_buffer_committed(item_id, previous)])
        effects.events.extend(self.events.item_entered(item, previous))
        effects.records.append(self.conversation.record(item, audio_ms=audio.size * 1000 // SAMPLE_RATE))
        transcription = config["audio"]["input"]["transcription"]
        # With a companion every turn is transcribed: it reads the user's words. The client hears of
        # it only when it asked.
        hidden = transcription is None and self.transcribe_all
        if (transcription is not None or hidden) and audio.size:
            transcription = transcription or {}
            effects.transcriptions.append(
                TranscriptionRequest(
                    item_id=item_id,
                    audio=audio,
                    model=transcription.get("model") or "",
                    language=transcription.get("language"),
                    prompt=transcription.get("prompt"),
                )
            )
            self.transcriptions.sent(item_id, not hidden)
        return effects

    def transcribed(self, result: TranscriptionOutcome, config: dict[str, Any]) -> Effects:
        """The ASR service's text for a user item: the event (when the client asked for it), the
        item's transcript, the record."""
        asked = config["audio"]["input"]["transcription"] is not None
        visible = self.transcriptions.returned(result.item_id, asked)
        effects = Effects(records=[result])
        if result.error is None:
            self.conversation.transcribed(result.item_id, result.text, visible=visible)
            if visible:
                effects.events.append(
                    self.events.transcription_completed(result.item_id, result.text, result.audio_seconds)
                )
        elif visible:
            effects.events.append(self.events.transcription_failed(result.item_id, result.error_code, result.error))
        return effects
