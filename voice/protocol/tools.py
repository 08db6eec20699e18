"""What the companion model is asked: the Realtime conversation, tools and tool_choice as chat-completions.

Moshi follows no instructions and calls no tools; a companion chat-completions model does it for it
(companion.py, docs/protocol-mapping.md "Tools through the companion"). This module is the pure
translation the session uses to build a CompanionRequest:

- Realtime function tools `{type: "function", name, description, parameters}` become
  `{"type": "function", "function": {name, description, parameters}}`; other tool types (MCP) are
  left out;
- `tool_choice` `"auto"` / `"none"` / `"required"` pass as they are, `{type: "function", name}`
  becomes `{"type": "function", "function": {"name": ...}}`, anything else is `"auto"`;
- the conversation's items become chat messages: user text and transcripts as `user`, what the
  assistant said as `assistant`, `function_call` items as the assistant's `tool_calls`,
  `function_call_output` as `tool`. The result always satisfies the chat-completions rules on
  tool messages (each answers a call of the assistant message just before it; every call of an
  assistant message is answered), whatever order the client put its items in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# A user audio turn whose words are unknown (transcription failed, or no ASR service).
INAUDIBLE = "(inaudible)"
# The assistant speaks what the companion writes: told so after the instructions.
SPEECH_NOTE = (
    "You are the voice of a spoken conversation: what you write is read aloud to the user. Answer in short, "
    "plain spoken sentences, with no markdown, lists, emoji or links."
)
# The most recent items the companion is shown; older ones stay in the conversation and the database.
MAX_HISTORY_ITEMS = 100


def function_tools(tools: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Realtime function tools as chat-completions tools (non-function tools are left out)."""
    out: list[dict[str, Any]] = []
    for tool in tools or ():
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function" or not tool.get("name"):
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        parameters = tool.get("parameters")
        function["parameters"] = parameters if isinstance(parameters, Mapping) else {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def tool_choice(choice: Any) -> str | dict[str, Any]:
    """A Realtime `tool_choice` as chat-completions's."""
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, Mapping) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    return "auto"  # an MCP choice, or nothing said


def system_message(session_instructions: str, response_instructions: str | None, spoken: bool) -> dict[str, Any]:
    parts = [text.strip() for text in (session_instructions, response_instructions or "") if text and text.strip()]
    if spoken:
        parts.append(SPEECH_NOTE)
    return {"role": "system", "content": "\n\n".join(parts)}


def _content_text(item: Mapping[str, Any], transcript: str | None) -> str:
    """The words of a message item: its text parts and audio transcripts, in order."""
    texts: list[str] = []
    for part in item.get("content") or ():
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            texts.append(str(part.get("text") or ""))
        elif kind in ("input_audio", "output_audio", "audio"):
            said = part.get("transcript")
            if said is None and kind == "input_audio":
                said = transcript  # heard by the server's ASR, though the client did not ask for it
            if said is None and kind == "input_audio":
                said = INAUDIBLE
            texts.append(str(said or ""))
    return " ".join(text.strip() for text in texts if text and text.strip())


def item_messages(items: Iterable[tuple[Mapping[str, Any], str | None]]) -> list[dict[str, Any]]:
    """Conversation items (each with the server's transcript of it, if any) as chat messages, tidied."""
    messages: list[dict[str, Any]] = []
    for item, transcript in items:
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            text = _content_text(item, transcript)
            if role == "assistant":
                if text:
                    messages.append({"role": "assistant", "content": text})
            elif role in ("user", "system"):
                messages.append({"role": role, "content": text or (INAUDIBLE if role == "user" else "")})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id") or item.get("id")),
                "type": "function",
                "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "{}")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # one assistant turn: its words and its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": str(item.get("call_id")), "content": str(item.get("output") or "")}
            )
    return _paired(messages)


def _paired(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tool result right after the assistant message that called it; calls nobody answered are
    dropped (an assistant message left with neither words nor calls goes too); results answering no
    call become user messages."""
    results: dict[str, dict[str, Any]] = {}
    for message in messages:
        if message["role"] == "tool":
            results.setdefault(message["tool_call_id"], message)  # the first answer counts
    called = {call["id"] for message in messages for call in message.get("tool_calls") or ()}
    used: set[str] = set()
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            if message["tool_call_id"] not in called or message is not results[message["tool_call_id"]]:
                out.append({"role": "user", "content": f"(result of {message['tool_call_id']}) {message['content']}"})
            continue
        calls = message.get("tool_calls")
        if not calls:
            out.append(message)
            continue
        answered = [call for call in calls if call["id"] in results and call["id"] not in used]
        if not answered and not message.get("content"):
            continue
        kept = {key: value for key, value in message.items() if key != "tool_calls"}
        if answered:
            kept["tool_calls"] = answered
        out.append(kept)
        for call in answered:
            used.add(call["id"])
            out.append(results[call["id"]])
    return out


def answers_calls(items: list[Mapping[str, Any]]) -> bool:
    """The conversation ends with function_call_outputs answering function calls it holds: the
    client ran the tools and wants the model to go on."""
    if not items or items[-1].get("type") != "function_call_output":
        return False
    calls = {item.get("call_id") for item in items if item.get("type") == "function_call"}
    return items[-1].get("call_id") in calls
