"""What a session asks of the companion model, and what it answers: plain data both protocols share.

Moshi calls no functions and follows no instructions. A companion, an OpenAI-compatible
chat-completions model (COMPANION_BASE_URL / COMPANION_API_KEY / COMPANION_MODEL), reads what was
said and decides: text, which Moshi then says in its own voice (Effects.speak, forced into the
slot's inner monologue by the engine), or tool calls, which the protocol turns into its own
function-call events. The protocol sessions (voice/protocol/session.py, voice/live/session.py)
build CompanionRequests as Effects; the runtime's SessionCompanion (voice/companion/) calls the
model with a timeout, bounded retries and a bounded queue, and hands each CompanionOutcome back
through ``session.companion_completed(outcome)``. The outcome is also a Record: what was asked and
answered is stored with the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    call_id: str  # the model's tool call id, or one the server made (call_...) when it gave none
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(frozen=True)
class CompanionRequest:
    """One chat-completions call: the conversation so far as chat messages, and the tools."""

    request_id: str  # unique per session (cmp_...): the outcome carries it back
    purpose: str  # what it answers, for the stored record: "turn", "response.create", "tool_output", "delegation", ...
    messages: list[dict[str, Any]]  # chat-completions messages, system first
    tools: list[dict[str, Any]] = field(
        default_factory=list
    )  # chat-completions {"type": "function", "function": {...}}
    tool_choice: str | dict[str, Any] | None = None  # "auto" | "none" | "required" | {"type": "function", ...}
    # The protocol's own bookkeeping (a response id, a delegation id): handed back untouched.
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompanionOutcome:
    """The companion's answer to one request: text and/or tool calls, or an error code and message."""

    request: CompanionRequest
    text: str
    tool_calls: tuple[ToolCall, ...]
    model: str
    latency_ms: int
    usage: dict[str, int] | None = None  # prompt_tokens, completion_tokens, total_tokens, as the API reported them
    error: str | None = None
    error_code: str | None = None  # companion_timeout, companion_error, companion_busy, ...

    @property
    def request_id(self) -> str:
        return self.request.request_id
