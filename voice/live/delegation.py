"""Delegation emulated with the companion model (LIVE_PROTOCOL.md §12 and §18).

In OpenAI's Live API the voice model itself decides to delegate. Moshi calls no functions and
follows no instructions, so here a text router decides instead: at the end of each user segment
(once its transcript is back from the ASR) the session asks the companion, an OpenAI-compatible
chat-completions model, with the conversation so far as chat messages.

- **responses** target: the companion gets `delegation.responses.instructions` and the function
  tools converted to chat-completions tools. Tool calls become `session.delegation.created`
  (with a `response_id`) and a nested Responses stream in `response.event`s; the client answers
  each call with `response.item.create {function_call_output}` and then `response.create`, which
  asks the companion again with `role: "tool"` messages; its text streams as a message response
  and Moshi says it (Effects.speak). A plain-text first answer is no delegation: Moshi answers on
  its own (the outcome is still stored). A client's `response.create` with nothing waiting asks
  the companion for a response of its own (no delegation, `delegation_id` omitted).
- **client** target: the companion gets the session's instructions and one function, `delegate`;
  calling it becomes `session.delegation.created {target: "client"}`. The application's appends
  name that id; commentary is spoken, instructions and thinking become companion context.

A delegation that waits is acknowledged aloud ("One moment.") after `acknowledgement_delay_ms`
unless commentary or thinking comes first. A failed companion call is `response.failed`
(responses) or an `info` (client), never a wait.
Nothing here does I/O: requests go out as Effects.companion, answers come back through
`completed`. This module is the state machine only (Delegator, with its Chain of Responses
continuations): what the companion reads is built in companion_chat.py, and the nested Responses
events in response_stream.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voice.protocol.companion import CompanionOutcome, CompanionRequest, ToolCall
from voice.protocol.effects import Effects
from voice.protocol.errors import ProtocolError
from voice.protocol.ids import new_id

from .companion_chat import CallGroup, History, companion_tool_choice, companion_tools, text_of
from .events import LiveEvents
from .response_stream import ResponseStream, response_usage

DEFAULT_BACKEND_INSTRUCTIONS = "You are the backend of a voice assistant. Use the tools to serve the user's requests."
SPOKEN = (
    "Whatever text you write is spoken aloud by the voice model, word for word: answer in one to three short, "
    "plain spoken sentences, with no markdown, lists or code."
)
ROUTER = (
    "A voice model is talking with the user. Decide whether the user's latest turn needs the application "
    "(a task, a look-up, an action, or knowledge the voice model lacks): if it does, call `delegate` with the task; "
    "if it is small talk the voice model can answer by itself, reply with an empty message."
)
DELEGATE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "delegate",
        "description": "Hand the user's latest request to the application, which answers it.",
        "parameters": {
            "type": "object",
            "properties": {"task": {"type": "string", "description": "The request, in one sentence."}},
            "required": ["task"],
        },
    },
}
# Said by Moshi `acknowledgement_delay_ms` after a delegation is created (0, the default outside
# Decisions: at once), unless commentary or thinking is appended first (SDK ClientDelegation).
ACKNOWLEDGEMENT = "One moment."
# A responses delegation waiting for tool outputs stops new turn delegations; a user turn this long
# after its calls went out abandons it instead (a client that never answers must not stall it).
ABANDON_MS = 60_000
NEEDS_ASR = (
    "Delegation is triggered by the end of a user turn, which needs input transcription, and no "
    "transcription service is configured: no delegation will be created from speech. "
    "response.create still asks the backend (Responses delegation)."
)
CLIENT_NEEDS_ASR = (
    "Delegation is triggered by the end of a user turn, which needs input transcription, and no "
    "transcription service is configured: no delegation will be created."
)


# --- the delegations of one session -------------------------------------------------------------


@dataclass
class Chain:
    """A Responses response and its continuations: waiting for the companion, or for tool outputs."""

    delegation_id: str | None  # None: a response the client asked for with response.create
    stream: ResponseStream | None = None  # the response in flight or waiting for outputs
    group: CallGroup | None = None  # calls waiting for the client's outputs
    waiting_since_ms: int = 0
    in_flight: bool = False


class Delegator:
    """The delegation state of one LiveSession (used only when a companion is configured)."""

    def __init__(self, events: LiveEvents, wall: Callable[[], float], transcribes: bool) -> None:
        self.events = events
        self.wall = wall
        self.transcribes = transcribes
        self.delegation: dict[str, Any] = {"type": "client"}
        self.instructions = ""
        self.history = History()
        self.client_ids: set[str] = set()  # client delegations created in this session
        self.chain: Chain | None = None
        self.turn_in_flight = False  # a turn's request is with the companion
        self.turn_waiting: tuple[int, int] | None = None  # a turn that came meanwhile: (start_ms, end_ms)
        self.acks: dict[str, int] = {}  # delegation id -> when its spoken acknowledgement is due

    # --- configuration ----------------------------------------------------------------------

    def configure(self, resource: dict[str, Any]) -> None:
        self.delegation = resource.get("delegation") or {"type": "client"}
        self.instructions = resource.get("instructions") or ""

    def started(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        """At session.start: the startup input becomes context; an `info` when nothing can trigger."""
        self.configure(resource)
        self.history.seed(resource.get("input") or [])
        if self.transcribes:
            return []
        text = NEEDS_ASR if self.target == "responses" else CLIENT_NEEDS_ASR
        return [self.events.info("delegation_needs_transcription", text)]

    @property
    def target(self) -> str:
        return str(self.delegation.get("type") or "client")

    @property
    def responses(self) -> dict[str, Any]:
        return self.delegation.get("responses") or {}

    # --- what the session tells it ----------------------------------------------------------

    def speech(self, start_ms: int, text: str) -> None:
        """Moshi said a token of its own (forced text is added as the reply it comes from)."""
        self.history.speech(start_ms, text)

    def appended(self, kind: str, content: str, spoken: bool) -> None:
        """An accepted append: instructions and thinking are context, spoken commentary is what Moshi says."""
        if kind in ("commentary", "thinking"):
            self.acks.clear()  # "cancels all pending acknowledgements, including those for other delegations"
        if spoken:
            self.history.assistant(content)
        else:
            self.history.note(content if kind == "instructions" else f"({kind}) {content}")

    def due(self, now_ms: int) -> list[str]:
        """Acknowledgements to say now (one per delegation whose delay has passed)."""
        ready = [d for d, at in self.acks.items() if at <= now_ms]
        for delegation_id in ready:
            del self.acks[delegation_id]
        return [ACKNOWLEDGEMENT] if ready else []

    def _acknowledge(self, delegation_id: str, now_ms: int, effects: Effects) -> None:
        delay = max(int(self.delegation.get("acknowledgement_delay_ms") or 0), 0)
        if delay:
            self.acks[delegation_id] = now_ms + delay
        else:
            effects.speak.append(ACKNOWLEDGEMENT)

    def knows(self, delegation_id: str) -> bool:
        return delegation_id in self.client_ids

    def user_turn(self, start_ms: int, end_ms: int, text: str, now_ms: int) -> Effects:
        """A user segment's transcript: context, and a delegation decision when nothing is pending."""
        self.history.user(start_ms, text)
        chain = self.chain
        if chain is not None and chain.group is not None and now_ms - chain.waiting_since_ms >= ABANDON_MS:
            self.chain = None  # its calls stay in the history with "No result was returned."
        if self.turn_in_flight or self.chain is not None:
            self.turn_waiting = (start_ms, end_ms)  # asked about once the companion is free
            return Effects()
        return self._ask_turn(end_ms)

    def _ask_turn(self, end_ms: int) -> Effects:
        self.turn_waiting = None
        if self.target == "responses":
            tools = companion_tools(self.responses)
            if not tools or self.responses.get("tool_choice") == "none":
                return Effects()  # only text could come back, and Moshi answers by itself
            system = f"{self.responses.get('instructions') or DEFAULT_BACKEND_INSTRUCTIONS}\n\n{SPOKEN}"
            request = self._request(
                "delegation", system, tools, companion_tool_choice(self.responses), offset_ms=end_ms
            )
        elif self.target == "client":
            system = f"{self.instructions}\n\n{ROUTER}"
            request = self._request("delegation", system, [DELEGATE_TOOL], "auto", offset_ms=end_ms)
        else:
            return Effects()
        self.turn_in_flight = True
        return Effects(companion=[request])

    def _request(
        self, purpose: str, system: str, tools: list[dict[str, Any]], tool_choice: Any, **context: Any
    ) -> CompanionRequest:
        return CompanionRequest(
            request_id=new_id("cmp"),
            purpose=purpose,
            messages=self.history.messages(system),
            tools=tools,
            tool_choice=tool_choice if tools else None,
            context={"target": self.target, **context},
        )

    # --- client commands (Responses delegation) ---------------------------------------------

    def item_create(self, event: dict[str, Any]) -> Effects:
        item = event["item"]
        kind = item.get("type") or ("message" if "role" in item else "item_reference")
        if kind == "function_call_output":
            return self._output(item)
        if kind == "message" and item.get("role") in ("user", "system", "developer", "assistant"):
            text = text_of(item.get("content"))
            if item["role"] in ("system", "developer"):
                self.history.note(text)
            elif item["role"] == "assistant":
                self.history.assistant(text)
            else:
                self.history.user(1 << 62, text)  # after everything Moshi has said
            return Effects()
        raise ProtocolError(
            "unsupported_item",
            f"Items of type '{str(kind)[:64]}' are not supported here: send function_call_output or message items.",
            param="item.type",
        )

    def _output(self, item: dict[str, Any]) -> Effects:
        chain = self.chain
        if chain is None or chain.group is None:
            raise ProtocolError(
                "no_pending_delegation",
                "No Responses delegation is waiting for tool results in this session.",
                param="item.call_id",
            )
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ProtocolError(
                "missing_required_parameter", "Missing required parameter: 'item.call_id'.", param="item.call_id"
            )
        if call_id not in {c.call_id for c in chain.group.calls}:
            raise ProtocolError(
                "invalid_value",
                f"Unknown call_id '{call_id[:64]}': the waiting response has no such function call.",
                param="item.call_id",
            )
        chain.group.outputs[call_id] = text_of(item.get("output"))
        return Effects()

    def response_create(self, event_id: str | None) -> Effects:
        chain = self.chain
        if chain is not None and chain.in_flight:
            raise ProtocolError("response_in_progress", "A response is already in progress; wait for it to finish.")
        if chain is not None and chain.group is not None:
            missing = [c.call_id for c in chain.group.calls if c.call_id not in chain.group.outputs]
            if missing:
                raise ProtocolError(
                    "function_call_outputs_required",
                    "Send a function_call_output with response.item.create for every call before response.create; "
                    f"missing: {', '.join(missing)}.",
                )
            purpose = "tool_output"
        else:
            chain = self.chain = Chain(delegation_id=None)
            purpose = "response.create"
        chain.group = None
        chain.in_flight = True
        self.turn_waiting = None  # the turns said meanwhile are in this request's messages
        chain.stream = ResponseStream(self.events, self.responses, chain.delegation_id, self.wall)
        system = f"{self.responses.get('instructions') or DEFAULT_BACKEND_INSTRUCTIONS}\n\n{SPOKEN}"
        request = self._request(
            purpose,
            system,
            companion_tools(self.responses),
            companion_tool_choice(self.responses) if purpose == "response.create" else "auto",
            delegation_id=chain.delegation_id,
            response_id=chain.stream.id,
        )
        return Effects(events=[chain.stream.created(event_id)], companion=[request])

    # --- the companion's answers ------------------------------------------------------------

    def completed(self, outcome: CompanionOutcome, now_ms: int) -> Effects:
        context = outcome.request.context
        if outcome.request.purpose == "delegation":
            self.turn_in_flight = False
            effects = self._turn_answer(outcome, context, now_ms)
        else:
            effects = self._chain_answer(outcome, context, now_ms)
        if self.turn_waiting is not None and not self.turn_in_flight and self.chain is None:
            effects.extend(self._ask_turn(self.turn_waiting[1]))
        return effects

    def _turn_answer(self, outcome: CompanionOutcome, context: dict[str, Any], now_ms: int) -> Effects:
        offset_ms = int(context.get("offset_ms", 0))
        if context.get("target") != self.target or self.chain is not None:
            return Effects()  # the session changed meanwhile: nothing to act on
        if context["target"] == "client":
            if outcome.error is not None:
                message = f"The delegation router failed ({outcome.error_code}): {outcome.error}"
                return Effects(events=[self.events.info("delegation_failed", message[:512])])
            if not outcome.tool_calls:
                return Effects()
            delegation_id = new_id("dlg")
            self.client_ids.add(delegation_id)
            effects = Effects(events=[self.events.delegation_created(delegation_id, "client", None, offset_ms)])
            self._acknowledge(delegation_id, now_ms, effects)
            return effects
        calls = self._calls(outcome.tool_calls)
        if outcome.error is None and not calls:
            return Effects()  # a plain answer: no delegation, Moshi answers by itself
        chain = self.chain = Chain(delegation_id=new_id("dlg"))
        assert chain.delegation_id is not None
        chain.stream = ResponseStream(self.events, self.responses, chain.delegation_id, self.wall)
        events = [
            self.events.delegation_created(chain.delegation_id, "responses", chain.stream.id, offset_ms),
            chain.stream.created(),
        ]
        effects = self._finish(outcome, calls, now_ms)
        effects.events[:0] = events
        if self.chain is not None:  # it waits for the client's tool outputs
            self._acknowledge(chain.delegation_id, now_ms, effects)
        return effects

    def _chain_answer(self, outcome: CompanionOutcome, context: dict[str, Any], now_ms: int) -> Effects:
        chain = self.chain
        if chain is None or chain.stream is None or chain.stream.id != context.get("response_id"):
            return Effects()  # abandoned meanwhile
        return self._finish(outcome, self._calls(outcome.tool_calls), now_ms)

    def _finish(self, outcome: CompanionOutcome, calls: list[ToolCall], now_ms: int) -> Effects:
        """The rest of the chain's current response: function calls, a message, or its failure."""
        chain = self.chain
        assert chain is not None and chain.stream is not None
        stream = chain.stream
        chain.in_flight = False
        if outcome.error is not None:
            self.chain = None
            return Effects(events=[stream.failed(outcome)])
        usage = response_usage(outcome.usage)
        if calls:
            group = CallGroup(calls)
            self.history.calls(group)
            chain.group, chain.waiting_since_ms = group, now_ms
            return Effects(events=[*stream.function_calls(calls), stream.completed(usage)])
        self.chain = None
        if chain.delegation_id is not None:
            self.acks.pop(chain.delegation_id, None)  # the answer itself is said instead
        text = outcome.text.strip()
        effects = Effects(events=[*(stream.message(text) if text else []), stream.completed(usage)])
        if text:
            self.history.assistant(text)
            effects.speak.append(text)
        return effects

    @staticmethod
    def _calls(tool_calls: tuple[ToolCall, ...]) -> list[ToolCall]:
        """Calls with unique ids (some servers repeat or omit them) and JSON arguments."""
        seen: set[str] = set()
        calls = []
        for call in tool_calls:
            call_id = call.call_id if call.call_id and call.call_id not in seen else new_id("call")
            seen.add(call_id)
            calls.append(ToolCall(call_id, call.name, call.arguments.strip() or "{}"))
        return calls
