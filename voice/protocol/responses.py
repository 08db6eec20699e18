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

The session decides when a response opens and closes; `open_response` and `close_response` here
are what opening and closing send and store, in the order OpenAI sends it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import limits
from .audio import FRAME_MS, encode_pcm16
from .conversation import Conversation
from .dialect import Dialect, assistant_part_type
from .effects import Effects
from .errors import ProtocolError
from .events import EventFactory
from .ids import new_id
from .limits import SessionLimits


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
    heard: str | None = None  # the client truncated this response's item: the text it heard

    @classmethod
    def requested(
        cls, params: dict[str, Any], session: dict[str, Any], dialect: Dialect, conversation_id: str
    ) -> Response:
        """The response ``params`` ask for (`response.create`'s `response`; {} for turn detection),
        the session's settings filling in the rest."""
        modalities = params.get("output_modalities") or params.get("modalities") or session["output_modalities"]
        return cls(
            dialect=dialect,
            audio="audio" in modalities,
            conversation_id=conversation_id if params.get("conversation", "auto") != "none" else None,
            metadata=params.get("metadata"),
            max_output_tokens=params.get(
                "max_output_tokens", params.get("max_response_output_tokens", session["max_output_tokens"])
            ),
            session=session,
        )

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
            if not self.audio:
                part["text"] = self.transcript
            elif self.heard is not None and status != "in_progress":
                part["transcript"] = self.heard  # the final item says what the client heard
            else:
                part["transcript"] = self.transcript
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


def check_request(params: dict[str, Any], active: Response | None, session_limits: SessionLimits) -> None:
    """A `response.create` this server cannot answer: one is ``active`` already, it asks for what
    Moshi cannot do, or it is over the session's limits."""
    if active is not None:
        raise ProtocolError(
            "conversation_already_has_active_response",
            f"Conversation already has an active response in progress: {active.id}. "
            "Wait until the response is finished before creating a new one.",
        )
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
    limits.check_instructions(params.get("instructions"), session_limits, "response.instructions")
    limits.check_tools(params.get("tools"), session_limits, "response.tools")
    limits.check_metadata(params.get("metadata"), session_limits, "response.metadata")


def output_events(
    events: EventFactory, response: Response, text: str | None, pcm: np.ndarray | None
) -> list[dict[str, Any]]:
    """One frame of the model's output inside a response: its audio and its text piece (a transcript
    delta, or a text delta in a text-only response), the piece kept for usage and truncation."""
    out: list[dict[str, Any]] = []
    if response.audio and pcm is not None:
        out.append(events.audio_delta(response.ref, encode_pcm16(pcm)))
    if text:
        response.text_tokens += 1
        response.pieces.append((response.frames, text))
        delta = events.transcript_delta if response.audio else events.text_delta
        out.append(delta(response.ref, text))
    return out


def open_response(events: EventFactory, conversation: Conversation, response: Response) -> Effects:
    """A response opens: `response.created`, `output_item.added`, its item entering the conversation
    (unless it is out of band), `content_part.added`."""
    item = response.item("in_progress")
    effects = Effects(events=[events.response_created(response.body("in_progress", None, []))])
    effects.events.append(events.output_item_added(response.id, 0, item))
    if response.conversation_id is not None:
        previous = conversation.insert(item)
        effects.events.extend(events.item_entered(item, previous))
    effects.events.append(events.content_part(False, response.ref, response.part(final=False)))
    return effects


def close_response(
    events: EventFactory, conversation: Conversation, response: Response, status: str, reason: str | None
) -> Effects:
    """A response closes with ``status`` (and ``reason`` unless completed): the audio and transcript
    (or text) done, `content_part.done`, its item done, `output_item.done`, `response.done`, and the
    item's record, with what the client heard of it if it truncated it."""
    ref = response.ref
    effects = Effects()
    events_out = effects.events
    if response.audio:
        events_out.append(events.audio_done(ref))
        events_out.append(events.transcript_done(ref, response.transcript))
    else:
        events_out.append(events.text_done(ref, response.transcript))
    events_out.append(events.content_part(True, ref, response.part(final=True)))
    item = response.item("completed" if status == "completed" else "incomplete")
    # The client may have deleted the item meanwhile, or newer server items pushed it out.
    if response.conversation_id is not None and response.item_id in conversation:
        previous = conversation.finish(item, response, response.heard)
        events_out.extend(events.item_done(conversation.snapshot(response.item_id), previous))
    events_out.append(events.output_item_done(response.id, 0, item))
    details = {"type": status, "reason": reason} if status != "completed" else None
    events_out.append(events.response_done(response.body(status, details, [item])))
    if response.conversation_id is not None:
        effects.records.append(
            conversation.record(item, audio_ms=response.audio_ms, response_id=response.id, heard=response.heard)
        )
    return effects
