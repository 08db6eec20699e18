"""Every server event is built here, once, for either dialect.

Events are plain dicts ready for json.dumps. Each carries a fresh `event_id` (clients such as
pipecat and the JS reference client fail without one). Shapes follow the openai SDK's models for
the dialect; the tests validate every event we send against them.
"""

from __future__ import annotations

from typing import Any

from .dialect import Dialect, event_name
from .errors import ProtocolError
from .ids import new_id
from .session_config import render


class EventFactory:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def _event(self, ga_type: str, **fields: Any) -> dict[str, Any]:
        return {"type": event_name(self.dialect, ga_type), "event_id": new_id("event"), **fields}

    # --- session and errors -------------------------------------------------------------------

    def session_created(self, session: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.created", session=render(session, self.dialect))

    def session_updated(self, session: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.updated", session=render(session, self.dialect))

    def conversation_created(self, conversation_id: str) -> dict[str, Any]:
        return self._event(
            "conversation.created", conversation={"id": conversation_id, "object": "realtime.conversation"}
        )

    def error(self, exc: ProtocolError, client_event_id: str | None) -> dict[str, Any]:
        return self._event(
            "error",
            error={
                "type": exc.type,
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
                "event_id": client_event_id,
            },
        )

    # --- input audio buffer -------------------------------------------------------------------

    def input_audio_buffer_committed(self, item_id: str, previous_item_id: str | None) -> dict[str, Any]:
        return self._event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous_item_id)

    def speech_started(self, audio_start_ms: int, item_id: str) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id)

    def speech_stopped(self, audio_end_ms: int, item_id: str) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)

    def input_audio_buffer_cleared(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.cleared")

    # --- conversation items -------------------------------------------------------------------

    def item_entered(self, item: dict[str, Any], previous_item_id: str | None) -> list[dict[str, Any]]:
        """An item entering the conversation: beta `created`; GA `added` (+ `done` when final)."""
        if self.dialect is Dialect.BETA:
            return [self._event("conversation.item.created", item=item, previous_item_id=previous_item_id)]
        events = [self._event("conversation.item.added", item=item, previous_item_id=previous_item_id)]
        if item.get("status") != "in_progress":
            events.append(self._event("conversation.item.done", item=item, previous_item_id=previous_item_id))
        return events

    def item_done(self, item: dict[str, Any], previous_item_id: str | None) -> list[dict[str, Any]]:
        """GA announces a model item's final state; beta has no such event."""
        if self.dialect is Dialect.BETA:
            return []
        return [self._event("conversation.item.done", item=item, previous_item_id=previous_item_id)]

    def item_retrieved(self, item: dict[str, Any]) -> dict[str, Any]:
        return self._event("conversation.item.retrieved", item=item)

    def item_truncated(self, item_id: str, content_index: int, audio_end_ms: int) -> dict[str, Any]:
        return self._event(
            "conversation.item.truncated", item_id=item_id, content_index=content_index, audio_end_ms=audio_end_ms
        )

    def item_deleted(self, item_id: str) -> dict[str, Any]:
        return self._event("conversation.item.deleted", item_id=item_id)

    def transcription_completed(self, item_id: str, transcript: str, audio_seconds: float) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=transcript,
            usage={"type": "duration", "seconds": round(audio_seconds, 3)},
        )

    def transcription_failed(self, item_id: str, code: str | None, message: str) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.failed",
            item_id=item_id,
            content_index=0,
            error={"type": "transcription_error", "code": code, "message": message, "param": None},
        )

    # --- responses ----------------------------------------------------------------------------

    def response_created(self, response: dict[str, Any]) -> dict[str, Any]:
        return self._event("response.created", response=response)

    def response_done(self, response: dict[str, Any]) -> dict[str, Any]:
        return self._event("response.done", response=response)

    def output_item_added(self, response_id: str, output_index: int, item: dict[str, Any]) -> dict[str, Any]:
        return self._event("response.output_item.added", response_id=response_id, output_index=output_index, item=item)

    def output_item_done(self, response_id: str, output_index: int, item: dict[str, Any]) -> dict[str, Any]:
        return self._event("response.output_item.done", response_id=response_id, output_index=output_index, item=item)

    def content_part(self, done: bool, ref: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
        return self._event("response.content_part.done" if done else "response.content_part.added", **ref, part=part)

    def audio_delta(self, ref: dict[str, Any], delta: str) -> dict[str, Any]:
        return self._event("response.output_audio.delta", **ref, delta=delta)

    def audio_done(self, ref: dict[str, Any]) -> dict[str, Any]:
        return self._event("response.output_audio.done", **ref)

    def transcript_delta(self, ref: dict[str, Any], delta: str) -> dict[str, Any]:
        return self._event("response.output_audio_transcript.delta", **ref, delta=delta)

    def transcript_done(self, ref: dict[str, Any], transcript: str) -> dict[str, Any]:
        return self._event("response.output_audio_transcript.done", **ref, transcript=transcript)

    def text_delta(self, ref: dict[str, Any], delta: str) -> dict[str, Any]:
        return self._event("response.output_text.delta", **ref, delta=delta)

    def text_done(self, ref: dict[str, Any], text: str) -> dict[str, Any]:
        return self._event("response.output_text.done", **ref, text=text)

    def function_call_arguments_delta(self, ref: dict[str, Any], call_id: str, delta: str) -> dict[str, Any]:
        return self._event("response.function_call_arguments.delta", **ref, call_id=call_id, delta=delta)

    def function_call_arguments_done(
        self, ref: dict[str, Any], call_id: str, name: str, arguments: str
    ) -> dict[str, Any]:
        """GA names the function here too; beta's event has no `name`."""
        extra = {"name": name} if self.dialect is Dialect.GA else {}
        return self._event(
            "response.function_call_arguments.done", **ref, call_id=call_id, arguments=arguments, **extra
        )
