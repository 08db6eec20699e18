"""Live server events as plain dicts, each shaped exactly like its `openai.types.live` model.

The SDK parses server events without validating them, so a wrong shape surfaces as a confusing
failure far from here; tests/strict_live.py validates every event these methods build against the
SDK's models with extra keys forbidden. Every event but `session.output_audio.delta` has an
`event_id`; `client_event_id` is set only when the client's command had one.
"""

from __future__ import annotations

from typing import Any

from voice.protocol.errors import ProtocolError
from voice.protocol.ids import new_id


class LiveEvents:
    def _event(self, kind: str, client_event_id: str | None = None, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "event_id": new_id("event"), **fields}
        if client_event_id is not None:
            event["client_event_id"] = client_event_id
        return event

    def error(self, exc: ProtocolError, client_event_id: str | None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": exc.type, "code": exc.code, "message": exc.message, "param": exc.param}
        if client_event_id is not None:
            error["client_event_id"] = client_event_id
        return self._event("error", client_event_id, error=error)

    def info(self, code: str, message: str, client_event_id: str | None = None) -> dict[str, Any]:
        return self._event("info", client_event_id, code=code, message=message)

    def session_started(self, session: dict[str, Any], client_event_id: str | None) -> dict[str, Any]:
        return self._event("session.started", client_event_id, session=session)

    def session_updated(self, session: dict[str, Any], client_event_id: str | None) -> dict[str, Any]:
        return self._event("session.updated", client_event_id, session=session)

    def session_closed(
        self, reason: str, session: dict[str, Any], seconds: int, client_event_id: str | None
    ) -> dict[str, Any]:
        return self._event(
            "session.closed", client_event_id, reason=reason, session=session, usage={"seconds": seconds}
        )

    def usage_updated(self, seconds: int, usage_ratio: float | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"usage": {"seconds": seconds}}
        if usage_ratio is not None:
            fields["context_window"] = {"usage_ratio": usage_ratio}
        return self._event("session.usage.updated", **fields)

    def ack(self, kind: str, client_event_id: str | None) -> dict[str, Any]:
        """`session.input_audio.muted`/`unmuted`, `session.output_audio.fixture.playing`/`played`."""
        return self._event(kind, client_event_id)

    def appended(self, kind: str, at_ms: int, client_event_id: str | None) -> dict[str, Any]:
        return self._event(f"session.{kind}.appended", client_event_id, start_ms=at_ms, end_ms=at_ms)

    def delegation_created(
        self, delegation_id: str, target: str, response_id: str | None, offset_ms: int
    ) -> dict[str, Any]:
        delegation: dict[str, Any] = {"id": delegation_id, "type": "delegation", "target": target}
        if response_id is not None:
            delegation["response_id"] = response_id
        return self._event("session.delegation.created", delegation=delegation, offset_ms=offset_ms)

    def response_event(
        self, event: dict[str, Any], delegation_id: str | None, client_event_id: str | None = None
    ) -> dict[str, Any]:
        """A nested Responses streaming event; `delegation_id` is omitted for a response the
        client asked for outside any delegation."""
        fields: dict[str, Any] = {"event": event}
        if delegation_id is not None:
            fields["delegation_id"] = delegation_id
        return self._event("response.event", client_event_id, **fields)

    def audio_delta(self, delta: str) -> dict[str, Any]:
        """No event_id: the primary WebSocket's audio deltas carry only their audio."""
        return {"type": "session.output_audio.delta", "delta": delta}

    def transcript_delta(self, speaker: str, text: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        kind = "session.input_transcript.delta" if speaker == "user" else "session.output_transcript.delta"
        return self._event(kind, delta=text, start_ms=start_ms, end_ms=end_ms)
