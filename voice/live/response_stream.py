"""A Responses delegation's response as the nested `response.event` stream (LIVE_PROTOCOL.md §12).

Why it exists: with Responses delegation the Live API wraps a whole Responses stream (created,
output items, argument and text deltas, completed or failed) in `response.event`s, each with its
own sequence number and snapshots that follow OpenAI's shape. Building those events is separate
from deciding when a response starts or ends (delegation.py), so it lives here, as pure builders
that keep only a response's own counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voice.protocol.companion import CompanionOutcome, ToolCall
from voice.protocol.ids import new_id

from .events import LiveEvents


def snapshot_tool_choice(responses: dict[str, Any]) -> str | dict[str, Any]:
    """tool_choice as a Responses snapshot shows it (`allowed_tools` needs its mode there)."""
    choice = responses.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") == "allowed_tools":
            return {"type": "allowed_tools", "mode": choice.get("mode") or "auto", "tools": choice.get("tools") or []}
        return dict(choice)
    return choice if isinstance(choice, str) else "auto"


def response_usage(usage: dict[str, int] | None) -> dict[str, Any] | None:
    """The companion's chat-completions usage in a Responses `usage` object (None: not reported)."""
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens", prompt + completion)),
    }


class ResponseStream:
    """One Responses response as nested `response.event`s: sequence numbers, snapshots, items."""

    def __init__(
        self,
        events: LiveEvents,
        responses: dict[str, Any],
        delegation_id: str | None,
        wall: Callable[[], float],
    ) -> None:
        self.events = events
        self.id = new_id("resp")
        self.delegation_id = delegation_id
        self.model = str(responses.get("model") or "companion")
        self.parallel_tool_calls = bool(responses.get("parallel_tool_calls", True))
        self.tool_choice = snapshot_tool_choice(responses)
        self.created_at = int(wall())
        self.wall = wall
        self.sequence = 0
        self.output_index = 0

    def _event(self, body: dict[str, Any], client_event_id: str | None = None) -> dict[str, Any]:
        body["sequence_number"] = self.sequence
        self.sequence += 1
        return self.events.response_event(body, self.delegation_id, client_event_id)

    def snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        """Lifecycle snapshots leave out input and clear instructions, tools and output (§12)."""
        response = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "model": self.model,
            "status": status,
            "output": [],
            "instructions": None,
            "tools": [],
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
        }
        response.update(extra)
        return response

    def created(self, client_event_id: str | None = None) -> dict[str, Any]:
        return self._event({"type": "response.created", "response": self.snapshot("in_progress")}, client_event_id)

    def function_calls(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        out = []
        for call in calls:
            index, item_id = self.output_index, new_id("fc")
            self.output_index += 1
            item = {"type": "function_call", "id": item_id, "call_id": call.call_id, "name": call.name}
            out.append(
                self._event(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "arguments": "", "status": "in_progress"},
                    }
                )
            )
            where = {"item_id": item_id, "output_index": index}
            out.append(
                self._event({"type": "response.function_call_arguments.delta", **where, "delta": call.arguments})
            )
            out.append(
                self._event(
                    {
                        "type": "response.function_call_arguments.done",
                        **where,
                        "arguments": call.arguments,
                    }
                )
            )
            out.append(
                self._event(
                    {
                        "type": "response.output_item.done",
                        "output_index": index,
                        "item": {**item, "arguments": call.arguments, "status": "completed"},
                    }
                )
            )
        return out

    def message(self, text: str) -> list[dict[str, Any]]:
        index, item_id = self.output_index, new_id("msg")
        self.output_index += 1
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": []}
        out = [
            self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {
                        "type": "message",
                        "id": item_id,
                        "role": "assistant",
                        "status": "in_progress",
                        "content": [],
                    },
                }
            ),
            self._event({"type": "response.content_part.added", **where, "part": empty}),
        ]
        words = text.split(" ")
        for position, word in enumerate(words):
            piece = word if position == 0 else " " + word
            if piece:
                out.append(self._event({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}))
        part = {**empty, "text": text}
        out += [
            self._event({"type": "response.output_text.done", **where, "text": text, "logprobs": []}),
            self._event({"type": "response.content_part.done", **where, "part": part}),
            self._event(
                {
                    "type": "response.output_item.done",
                    "output_index": index,
                    "item": {
                        "type": "message",
                        "id": item_id,
                        "role": "assistant",
                        "status": "completed",
                        "content": [part],
                    },
                }
            ),
        ]
        return out

    def completed(self, usage: dict[str, Any] | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"completed_at": int(self.wall())}
        if usage is not None:
            extra["usage"] = usage
        return self._event({"type": "response.completed", "response": self.snapshot("completed", **extra)})

    def failed(self, outcome: CompanionOutcome) -> dict[str, Any]:
        code = outcome.error_code or "companion_error"
        error = {
            # The Responses error codes are a closed set: the companion's own code goes in `type`.
            "code": "rate_limit_exceeded" if code == "companion_busy" else "server_error",
            "message": outcome.error or "The delegation backend failed.",
            "type": code,
        }
        extra: dict[str, Any] = {"error": error}
        if (usage := response_usage(outcome.usage)) is not None:
            extra["usage"] = usage
        return self._event({"type": "response.failed", "response": self.snapshot("failed", **extra)})
