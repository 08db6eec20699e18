"""Responses from a full-duplex model: when one opens, what it holds, when it closes.

Moshi listens and speaks at once; the Realtime protocol thinks in responses. This module is the one
place that maps one onto the other (see docs/protocol-mapping.md, "Responses"):

- a response opens when turn detection commits the user's turn (with `create_response`), or at
  once on `response.create`; it takes the model's output from then on (output outside responses
  is not sent: voice-agent frameworks treat unrequested responses as collisions);
- it closes as `completed` after ``end_silence_ms`` of inactive output (no text token, audio
  below ``activity_rms``) following some activity, or after ``max_ms`` of output (the server's
  turn-length limit); as `incomplete` (reason `max_output_tokens`) when the client's
  `max_output_tokens` is spent; as `cancelled` on `response.cancel` or when the user barges in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .audio import FRAME_MS
from .dialect import Dialect, assistant_part_type
from .ids import new_id


@dataclass(frozen=True)
class ResponsePolicy:
    """Tunable thresholds of the response mapping (settings VOICE RESPONSE_*)."""

    activity_rms: float = 0.02
    end_silence_ms: int = 800
    max_ms: int = 30000


@dataclass
class Response:
    """One response with one assistant message item holding one audio (or text) content part."""

    dialect: Dialect
    audio: bool
    conversation_id: str | None
    metadata: dict[str, Any] | None
    max_output_tokens: int | str
    session: dict[str, Any]
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("item"))
    frames: int = 0
    text_tokens: int = 0
    heard_activity: bool = False
    silent_frames: int = 0
    pieces: list[tuple[int, str]] = field(default_factory=list)  # (frame index, text) for truncation

    @property
    def ref(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    @property
    def transcript(self) -> str:
        return "".join(text for _, text in self.pieces)

    @property
    def audio_ms(self) -> int:
        return self.frames * FRAME_MS if self.audio else 0

    def part(self, final: bool) -> dict[str, Any]:
        """The `part` of `response.content_part.*`: `audio`/`text` in both dialects."""
        text = self.transcript if final else ""
        return {"type": "audio", "transcript": text} if self.audio else {"type": "text", "text": text}

    def item(self, status: str, *, partial: bool = False) -> dict[str, Any]:
        """The assistant message item: announced empty while in progress, as OpenAI sends it;
        ``partial`` fills in what has been said so far (for `conversation.item.retrieve`)."""
        content: list[dict[str, Any]] = []
        if status != "in_progress" or partial:
            kind = "audio" if self.audio else "text"
            part: dict[str, Any] = {"type": assistant_part_type(self.dialect, kind)}
            part["transcript" if self.audio else "text"] = self.transcript
            content.append(part)
        item: dict[str, Any] = {
            "id": self.item_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
            "object": "realtime.item",
        }
        return item

    def body(self, status: str, status_details: dict[str, Any] | None, output: list[dict[str, Any]]) -> dict[str, Any]:
        """The `response` object of `response.created` / `response.done` in this dialect."""
        out_audio = self.session["audio"]["output"]
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": status_details,
            "output": output,
            "conversation_id": self.conversation_id,
            "metadata": self.metadata,
            "usage": self.usage() if status != "in_progress" else None,
            "max_output_tokens": self.max_output_tokens,
        }
        if self.dialect is Dialect.GA:
            body["output_modalities"] = ["audio"] if self.audio else ["text"]
            body["audio"] = {"output": {"format": out_audio["format"], "voice": out_audio["voice"]}}
        else:
            body["modalities"] = ["audio", "text"] if self.audio else ["text"]
            body["voice"] = out_audio["voice"] if isinstance(out_audio["voice"], str) else out_audio["voice"].get("id")
            body["output_audio_format"] = "pcm16"
            body["temperature"] = self.session["temperature"]
        return body

    def usage(self) -> dict[str, Any]:
        """Moshi's tokens: each 80 ms frame is 8 audio tokens; text tokens are the non-padding ones."""
        audio_tokens = self.frames * 8 if self.audio else 0
        output = audio_tokens + self.text_tokens
        return {
            "total_tokens": output,
            "input_tokens": 0,
            "output_tokens": output,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": self.text_tokens, "audio_tokens": audio_tokens},
        }

    def heard_text(self, audio_end_ms: int) -> str:
        """What the listener heard when playback stopped at ``audio_end_ms``."""
        return "".join(text for frame, text in self.pieces if frame * FRAME_MS < audio_end_ms)

    def over_time_limit(self, policy: ResponsePolicy) -> bool:
        """The server's turn-length limit: the response ends as completed (the turn is over)."""
        return self.frames * FRAME_MS >= policy.max_ms

    def over_token_budget(self) -> bool:
        """The client's `max_output_tokens`: the response ends as incomplete, as on OpenAI."""
        return isinstance(self.max_output_tokens, int) and self.usage()["output_tokens"] >= self.max_output_tokens

    def observe(self, active: bool, policy: ResponsePolicy) -> bool:
        """Count one output frame; True when a stretch of silence after speech ends the response."""
        self.frames += 1
        if active:
            self.heard_activity = True
            self.silent_frames = 0
            return False
        self.silent_frames += 1
        return self.heard_activity and self.silent_frames * FRAME_MS >= policy.end_silence_ms
