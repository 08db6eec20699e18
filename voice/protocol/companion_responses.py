"""Responses the companion model drives (docs/protocol-mapping.md, "Tools through the companion").

Why it exists: Moshi follows no instructions and calls no tools, so a response that needs either
is answered by the companion, and such a response goes through phases of its own: it waits for the
user's words ("transcribing"), then for the companion ("thinking"), then Moshi says the answer
("speaking"). This module owns that path: whether a response takes it, the request (built with
tools.py) and the one-at-a-time queue of requests, the patience while waiting, and turning the
answer into the response's output. RealtimeSession still decides when a response opens and closes:
this module closes one only through the session's own close, given as the `close` callback, so
that closing stays in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import tools
from .audio import FRAME_MS
from .companion import CompanionOutcome, CompanionRequest
from .conversation import Conversation
from .effects import Effects
from .errors import ProtocolError
from .events import EventFactory
from .ids import new_id
from .responses import Response, ResponsePolicy, open_message
from .user_turns import Transcriptions

# The session's own close of its open response: (status, reason, error) -> what closing sends.
Close = Callable[[str, str | None, dict[str, Any] | None], Effects]


class CompanionResponses:
    """The companion-driven responses of one session, and its companion requests."""

    def __init__(
        self,
        events: EventFactory,
        conversation: Conversation,
        policy: ResponsePolicy,
        transcriptions: Transcriptions,
        close: Close,
        *,
        enabled: bool,
    ) -> None:
        self.events = events
        self.conversation = conversation
        self.policy = policy
        self.transcriptions = transcriptions
        self._close = close
        self.enabled = enabled  # a companion model is configured
        # The companion request this session has in flight (at most one), and the one held until it
        # is back (at most one: a newer request replaces it, its response having been closed).
        self.in_flight: str | None = None
        self.held: CompanionRequest | None = None

    def _tools(self, params: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
        """The function tools for a response: `response.create`'s own, else the session's."""
        return tools.function_tools(params["tools"] if "tools" in params else config["tools"])

    def driven(self, params: dict[str, Any], config: dict[str, Any]) -> bool:
        """Whether the companion answers this response: there are tools to offer, instructions to
        follow, or tool results to go on from. Otherwise Moshi answers on its own."""
        if not self.enabled:
            return False
        if self._tools(params, config) or params.get("instructions"):
            return True
        return "input" not in params and tools.answers_calls(self.conversation.items())

    def open(self, response: Response, params: dict[str, Any], config: dict[str, Any]) -> Effects:
        """A companion-driven response opens: its output is known once the companion answers, so
        for now only `response.created`; the companion is asked once the user's words are in."""
        response.params = params
        response.phase = "transcribing"
        effects = Effects(events=[self.events.response_created(response.body("in_progress", None, []))])
        response.awaiting = self.transcriptions.pending()  # the words of every turn sent to the ASR service
        if not response.awaiting:
            effects.extend(self.ask(response, config))
        return effects

    def ask(self, response: Response, config: dict[str, Any]) -> Effects:
        """The user's words are known (or given up on): send the companion the conversation so far."""
        params = response.params
        if "input" in params:  # a context of its own, items referenced by id taken from the conversation
            history = [self._input_item(item) for item in params["input"] or []]
        else:
            history = self.conversation.history()
        messages = [
            tools.system_message(config["instructions"], params.get("instructions"), spoken=response.audio),
            *tools.item_messages(history[-tools.MAX_HISTORY_ITEMS :]),
        ]
        offered = self._tools(params, config)
        choice = params.get("tool_choice", config["tool_choice"])
        if "instructions" in params or "input" in params:
            purpose = "response.create"
        elif tools.answers_calls(self.conversation.items()):
            purpose = "tool_output"
        else:
            purpose = "turn"
        request = CompanionRequest(
            request_id=new_id("cmp"),
            purpose=purpose,
            messages=messages,
            tools=offered,
            tool_choice=tools.tool_choice(choice) if offered else None,
            context={"response_id": response.id},
        )
        response.phase = "thinking"
        response.request_id = request.request_id
        response.waited_frames = 0
        if self.in_flight is None:
            self.in_flight = request.request_id
            return Effects(companion=[request])
        self.held = request  # one is still out (for a closed response): this one goes next
        return Effects()

    def _input_item(self, item: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if item.get("type") == "item_reference":
            for known, transcript in self.conversation.history():
                if known.get("id") == item.get("id"):
                    return known, transcript
            return {}, None
        return item, None

    def tick(self, response: Response, config: dict[str, Any]) -> Effects:
        """A frame while a companion-driven response waits: past its patience, it goes on without."""
        response.waited_frames += 1
        waited_ms = response.waited_frames * FRAME_MS
        if response.phase == "transcribing" and waited_ms >= self.policy.transcript_wait_ms:
            self.transcriptions.forget(response.awaiting)
            response.awaiting.clear()
            return self.ask(response, config)
        if response.phase == "thinking" and waited_ms >= self.policy.companion_wait_ms:
            self.in_flight = None  # given up on: the next request goes out at once
            return self._fail(response, "companion_timeout", "The companion model did not answer in time.")
        return Effects()

    def _fail(self, response: Response, code: str, message: str) -> Effects:
        """The companion could not answer: an `error`, then the response fails."""
        error = ProtocolError(code, message, type="server_error")
        effects = Effects(events=[self.events.error(error, None)])
        effects.extend(self._close("failed", None, {"type": "server_error", "code": code, "message": message}))
        return effects

    def closed(self, response: Response) -> None:
        """The response has closed: its request, if still held, is never sent (no longer wanted)."""
        held = self.held
        if held is not None and held.request_id == response.request_id:
            self.held = None

    def returned(self, outcome: CompanionOutcome) -> Effects:
        """An answer is back, whatever it is for: stored, and the held request goes out next."""
        effects = Effects(records=[outcome])
        if outcome.request_id == self.in_flight:
            self.in_flight = None
            held, self.held = self.held, None
            if held is not None:
                self.in_flight = held.request_id
                effects.companion.append(held)
        return effects

    def answered(self, response: Response, outcome: CompanionOutcome) -> Effects:
        """The answer of the open response: tool calls become function_call items, text is what
        Moshi says next in this response, an error fails it."""
        effects = Effects()
        response.companion_usage = outcome.usage
        if outcome.error is not None:
            effects.extend(self._fail(response, outcome.error_code or "companion_error", outcome.error))
            return effects
        response.pending_calls = outcome.tool_calls
        text = outcome.text.strip()
        if not text:  # only calls (or nothing at all): the response is complete
            effects.extend(self._close("completed", None, None))
            return effects
        effects.extend(open_message(self.events, self.conversation, response))
        if not response.audio:  # a text response: the companion's text is its text
            response.text_tokens += 1
            response.pieces.append((0, text))
            effects.events.append(self.events.text_delta(response.ref, text))
            effects.extend(self._close("completed", None, None))
            return effects
        response.phase = "speaking"
        effects.speak.append(text)
        return effects
