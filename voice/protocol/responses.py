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

A response the companion model drives (docs/protocol-mapping.md, "Tools through the companion")
opens with `response.created` alone: its output is known only when the companion answers. Its
message item then says the companion's text in Moshi's voice (only the forced pieces make its
transcript) and closes when that text is said; its function calls (`function_call_items`) follow
the message, each as OpenAI streams one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import limits
from .audio import FRAME_MS, encode_pcm16
from .companion import ToolCall
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
    # Companion-driven responses (docs/protocol-mapping.md, "Tools through the companion"):
    forced_tail_ms: int = 240  # after the last forced piece is said: the audio lags its text
    forced_start_ms: int = 3000  # forced text that has not begun by then never will: the response ends
    transcript_wait_ms: int = 10000  # the user's words not transcribed by then: asked without them
    companion_wait_ms: int = 60000  # no answer from the companion by then: the response fails


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
    message_open: bool = False  # its message item has been announced (at once, unless companion-driven)
    # Companion-driven: "transcribing" (the user's words), "thinking" (the companion), "speaking"
    # (Moshi says the answer); "moshi" for a response Moshi answers on its own.
    phase: str = "moshi"
    params: dict[str, Any] = field(default_factory=dict)  # the response.create's `response`
    awaiting: set[str] = field(default_factory=set)  # user items whose transcription it waits for
    request_id: str | None = None  # the companion request it waits for
    waited_frames: int = 0  # ticks spent transcribing or thinking
    forced_started: bool = False  # a forced piece of its text has been said (or is queued)
    forced_left: int = 0  # forced tokens still to say, as of the last frame
    tail_frames: int = 0  # frames since the last forced piece
    pending_calls: tuple[ToolCall, ...] = ()  # the companion's calls, announced after the message
    calls: list[dict[str, Any]] = field(default_factory=list)  # function_call items announced (final)
    companion_usage: dict[str, int] | None = None

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

    @property
    def unsaid(self) -> bool:
        """It asked Moshi to say text that has not all been said: closing it must hush the rest."""
        return self.phase == "speaking" and not (self.forced_started and self.forced_left == 0)

    def usage(self) -> dict[str, Any]:
        """Moshi's tokens: each 80 ms frame is 8 audio tokens; text tokens are the non-padding ones.

        With the companion's usage, its prompt is the input (text) and its completion the output text.
        """
        audio_tokens = self.frames * 8 if self.audio else 0
        text_tokens = self.text_tokens
        prompt_tokens = 0
        if self.companion_usage is not None:
            prompt_tokens = int(self.companion_usage.get("prompt_tokens") or 0)
            text_tokens = int(self.companion_usage.get("completion_tokens") or 0)
        output = audio_tokens + text_tokens
        return {
            "total_tokens": prompt_tokens + output,
            "input_tokens": prompt_tokens,
            "output_tokens": output,
            "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
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

    def observe_forced(self, forced: bool, forced_left: int, policy: ResponsePolicy) -> bool:
        """Count one output frame of a response saying forced text; True when it has all been said
        and ``forced_tail_ms`` of audio has followed (or when it never began)."""
        self.frames += 1
        self.forced_left = forced_left
        if forced or forced_left > 0:
            self.forced_started = True
            self.tail_frames = 0
            return False
        if not self.forced_started:
            return self.frames * FRAME_MS >= policy.forced_start_ms
        self.tail_frames += 1
        return self.tail_frames * FRAME_MS >= policy.forced_tail_ms


def check_request(
    params: dict[str, Any], active: Response | None, session_limits: SessionLimits, *, companion: bool = False
) -> None:
    """A `response.create` this server cannot answer: one is ``active`` already, it asks for what
    Moshi cannot do (a required tool call, without a ``companion`` to make it), or it is over the
    session's limits."""
    if active is not None:
        raise ProtocolError(
            "conversation_already_has_active_response",
            f"Conversation already has an active response in progress: {active.id}. "
            "Wait until the response is finished before creating a new one.",
        )
    if params.get("tool_choice") == "required" and not companion:
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
    effects = Effects(events=[events.response_created(response.body("in_progress", None, []))])
    effects.extend(open_message(events, conversation, response))
    return effects


def open_message(events: EventFactory, conversation: Conversation, response: Response) -> Effects:
    """The response's message item starts: `output_item.added`, the item entering the conversation
    (unless the response is out of band), `content_part.added`."""
    response.message_open = True
    item = response.item("in_progress")
    effects = Effects(events=[events.output_item_added(response.id, 0, item)])
    if response.conversation_id is not None:
        previous = conversation.insert(item)
        effects.events.extend(events.item_entered(item, previous))
    effects.events.append(events.content_part(False, response.ref, response.part(final=False)))
    return effects


ARGUMENT_CHUNK = 64  # characters of a function call's arguments per `function_call_arguments.delta`


def function_call_item(item_id: str, call: ToolCall, status: str, arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "name": call.name,
        "call_id": call.call_id,
        "arguments": arguments,
        "object": "realtime.item",
    }


def function_call_items(events: EventFactory, conversation: Conversation, response: Response) -> Effects:
    """The companion's tool calls as the response's function_call output items, one after another as
    OpenAI streams each: `output_item.added` (arguments ""), the item entering the conversation, the
    arguments in `function_call_arguments.delta`s, `.done`, its final state, `output_item.done`."""
    effects = Effects()
    out = effects.events
    first = 1 if response.message_open else 0
    for index, call in enumerate(response.pending_calls, start=first):
        arguments = call.arguments or "{}"
        item_id = new_id("item")
        item = function_call_item(item_id, call, "in_progress", "")
        out.append(events.output_item_added(response.id, index, item))
        in_conversation = response.conversation_id is not None
        if in_conversation:
            previous = conversation.insert(item)
            out.extend(events.item_entered(item, previous))
        ref = {"response_id": response.id, "item_id": item_id, "output_index": index}
        for start in range(0, len(arguments), ARGUMENT_CHUNK):
            out.append(
                events.function_call_arguments_delta(ref, call.call_id, arguments[start : start + ARGUMENT_CHUNK])
            )
        out.append(events.function_call_arguments_done(ref, call.call_id, call.name, arguments))
        final = function_call_item(item_id, call, "completed", arguments)
        if in_conversation and item_id in conversation:
            previous = conversation.replace(final)
            out.extend(events.item_done(conversation.snapshot(item_id), previous))
        out.append(events.output_item_done(response.id, index, final))
        response.calls.append(final)
        if in_conversation:
            effects.records.append(conversation.record(final, response_id=response.id))
    response.pending_calls = ()
    return effects


def close_response(
    events: EventFactory,
    conversation: Conversation,
    response: Response,
    status: str,
    reason: str | None,
    error: dict[str, Any] | None = None,
) -> Effects:
    """A response closes with ``status`` (and ``reason`` unless completed; ``error`` when failed): its
    message's audio and transcript (or text) done, `content_part.done`, its item done,
    `output_item.done`; when completed, the function calls the companion made; `response.done`;
    and the items' records, with what the client heard of the message if it truncated it."""
    effects = Effects()
    output: list[dict[str, Any]] = []
    if response.message_open:
        item, message = _close_message(events, conversation, response, status)
        effects.extend(message)
        output.append(item)
    if status == "completed" and response.pending_calls:
        effects.extend(function_call_items(events, conversation, response))
    output.extend(response.calls)
    details: dict[str, Any] | None = None
    if status == "failed":
        details = {"type": "failed", "error": error}
    elif status != "completed":
        details = {"type": status, "reason": reason}
    effects.events.append(events.response_done(response.body(status, details, output)))
    return effects


def _close_message(
    events: EventFactory, conversation: Conversation, response: Response, status: str
) -> tuple[dict[str, Any], Effects]:
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
    if response.conversation_id is not None:
        effects.records.append(
            conversation.record(item, audio_ms=response.audio_ms, response_id=response.id, heard=response.heard)
        )
    return item, effects
