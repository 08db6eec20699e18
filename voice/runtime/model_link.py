"""A session's side of the model: its slot, what the protocol sends it and what comes back.

The slot is in this process (Slot) or in the engine process (RemoteSlot); both take frames, texts
to say, and the two flags (keep stepping while a response is open; score the audio with the VAD
while turn detection is on), and both hand back FrameOutputs through a bounded outbox. Kept apart
from SessionRuntime so that everything that touches the model for a session is in one place: what
an Effects asks of the model, moving to another model type's slot, and giving the slot back.
"""

from __future__ import annotations

import contextlib

from .. import metrics
from ..engine.manager import get_manager
from ..engine.remote import EngineUnavailable, RemoteSlot
from ..engine.slots import EngineFailure, FrameOutput, Slot
from ..protocol import Effects
from ..protocol.errors import ProtocolError
from .fronts import ProtocolSession

OVERFLOW = ProtocolError(
    "input_audio_buffer_overflow",
    "Audio arrives faster than real time and the input queue is full; the excess was dropped.",
    type="server_error",
)
SPEECH_QUEUE_FULL = ProtocolError(
    "speech_queue_full", "Too many texts are waiting to be said; this one was dropped.", type="server_error"
)


class ModelLink:
    def __init__(self, slot: Slot | RemoteSlot, model_type: str) -> None:
        self.slot = slot
        self.model_type = model_type

    @property
    def index(self) -> int:
        return self.slot.index

    def feed(self, effects: Effects, session: ProtocolSession) -> list[ProtocolError]:
        """Give the model what ``effects`` ask of it; the errors the client must hear about.

        Frames the input queue has no room for are dropped and the session is told how much.
        """
        errors = []
        dropped = sum(frame.size for frame in effects.frames if not self.slot.push(frame))
        if dropped:
            session.input_dropped(dropped)
            errors.append(OVERFLOW)
        if effects.hush:
            self.slot.hush()
        if not all([self.slot.speak(text) for text in effects.speak]):
            errors.append(SPEECH_QUEUE_FULL)
        self.slot.set_keep_running(session.wants_output)
        self.slot.set_detect_speech(session.wants_speech)
        return errors

    async def next_output(self) -> FrameOutput | EngineFailure:
        return await self.slot.outbox.get()

    def count_dropped_outputs(self) -> None:
        """Outputs the slot's outbox dropped for a client that reads slowly: into the metrics."""
        if self.slot.dropped_outputs:
            metrics.DROPPED_OUTPUT_FRAMES.inc(self.slot.dropped_outputs)
            self.slot.dropped_outputs = 0

    async def switch(self, model_type: str, session: ProtocolSession) -> str | None:
        """Move to a slot of ``model_type`` (Live's session.start may name another model): its model
        name, or None when none is free (this slot is kept then)."""
        manager = get_manager()
        slot = None
        if manager is not None and model_type in manager.model_names():
            with contextlib.suppress(EngineUnavailable):
                slot = await manager.open_slot(model_type, paced=self.slot.paced, detect_speech=session.wants_speech)
        if slot is None:
            return None
        old, self.slot, self.model_type = self.slot, slot, model_type
        old.release()
        self.slot.set_keep_running(session.wants_output)
        return manager.model_name(model_type)

    def release(self) -> None:
        self.slot.release()
