"""The conversation as the delegation companion reads it: chat-completions messages and tools.

Why it exists: the delegation state machine (delegation.py) decides *when* the companion is asked;
what it is shown is a separate concern with rules of its own. Moshi's words come back before the
user's (the ASR is slower), chat templates want roles to alternate, every tool call needs its tool
message, and the context must stay bounded. History keeps those rules in one place, and the
Responses delegation's function tools and tool_choice are translated to chat-completions here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voice.protocol.companion import ToolCall

NO_RESULT = "No result was returned."
MAX_MESSAGES = 48  # conversation messages the companion reads (the oldest go first)
MAX_CHARS = 24_000  # and their text, roughly
MAX_NOTES = 32


def text_of(content: Any) -> str:
    """The text of a message's or tool output's content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def companion_tools(responses: dict[str, Any]) -> list[dict[str, Any]]:
    """The function tools of a Responses delegation as chat-completions tools, filtered by an
    `allowed_tools` tool_choice (hosted tools were refused at session.start)."""
    allowed: set[str] | None = None
    choice = responses.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
    tools = []
    for tool in responses.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        if allowed is not None and tool.get("name") not in allowed:
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    return tools


def companion_tool_choice(responses: dict[str, Any]) -> str | dict[str, Any]:
    choice = responses.get("tool_choice")
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            return {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("type") == "allowed_tools":
            return choice.get("mode") or "auto"
    return "auto"


@dataclass
class CallGroup:
    """One response's function calls and the outputs the client has given for them."""

    calls: list[ToolCall]
    outputs: dict[str, str] = field(default_factory=dict)

    def messages(self) -> list[dict[str, Any]]:
        """An assistant message with the calls, then one tool message per call (always all of them,
        so the chat stays valid even when a delegation was abandoned)."""
        assistant = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls
            ],
        }
        tools = [
            {"role": "tool", "tool_call_id": c.call_id, "content": self.outputs.get(c.call_id, NO_RESULT)}
            for c in self.calls
        ]
        return [assistant, *tools]


class History:
    """User turns, Moshi's speech, delegated replies and tool calls, in session-clock order, plus
    notes (startup developer input, appended instructions and thinking) for the system message.

    The user's words come back from the ASR after Moshi may already have answered, so Moshi's
    words wait in `_speech` (with their start) and a user turn is placed before those that started
    after the turn did.
    """

    def __init__(self) -> None:
        self.entries: list[dict[str, Any] | CallGroup] = []
        self.notes: list[str] = []
        self._speech: list[tuple[int, str]] = []

    def seed(self, items: list[dict[str, Any]]) -> None:
        """The startup `input`: developer messages become notes, user and assistant messages turns."""
        for item in items:
            text = text_of(item.get("content"))
            if not text:
                continue
            if item.get("role") == "developer":
                self.note(text)
            else:
                self._add(item.get("role", "user"), text)

    def note(self, text: str) -> None:
        self.notes.append(text)
        del self.notes[:-MAX_NOTES]

    def speech(self, start_ms: int, text: str) -> None:
        self._speech.append((start_ms, text))

    def user(self, start_ms: int, text: str) -> None:
        earlier = [t for s, t in self._speech if s < start_ms]
        self._speech = [(s, t) for s, t in self._speech if s >= start_ms]
        if earlier:
            self._add("assistant", "".join(earlier).strip())
        self._add("user", text.strip())

    def assistant(self, text: str) -> None:
        self._flush()
        self._add("assistant", text.strip())

    def calls(self, group: CallGroup) -> None:
        self._flush()
        self.entries.append(group)
        self._trim()

    def messages(self, system: str) -> list[dict[str, Any]]:
        if self.notes:
            system += "\n\nContext from the application:\n" + "\n".join(f"- {n}" for n in self.notes)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for entry in self.entries:
            messages += entry.messages() if isinstance(entry, CallGroup) else [dict(entry)]
        pending = "".join(t for _, t in self._speech).strip()
        if pending:
            messages.append({"role": "assistant", "content": pending})
        return messages

    def _flush(self) -> None:
        pending = "".join(t for _, t in self._speech).strip()
        self._speech.clear()
        if pending:
            self._add("assistant", pending)

    def _add(self, role: str, text: str) -> None:
        if not text:
            return
        last = self.entries[-1] if self.entries else None
        if isinstance(last, dict) and last["role"] == role:  # chat templates want roles to alternate
            last["content"] += "\n" + text
        else:
            self.entries.append({"role": role, "content": text})
        self._trim()

    def _trim(self) -> None:
        def size(entry: dict[str, Any] | CallGroup) -> int:
            if isinstance(entry, CallGroup):
                return sum(len(c.arguments) for c in entry.calls) + sum(len(o) for o in entry.outputs.values())
            return len(entry["content"] or "")

        while len(self.entries) > 1 and (
            len(self.entries) > MAX_MESSAGES or sum(size(e) for e in self.entries) > MAX_CHARS
        ):
            self.entries.pop(0)
