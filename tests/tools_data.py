"""Function tools as the tool tests give them, and what the companion is asked with, shared by
tests/test_protocol_tools.py, tests/test_live_tools.py and tests/test_e2e_tools.py.

A client declares a function tool in the Realtime / Live / Responses form (``function_tool``); the
companion receives it in the chat-completions form (``chat_tool``). Both are written out here from
the same name, description and parameters, so that a test compares what the server translated with
a form it did not compute. The nested Responses events of a delegation's function call and of its
spoken reply (the Live API) are listed here too.
"""

from __future__ import annotations

import copy
from typing import Any

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def function_tool(name: str, description: str, parameters: dict[str, Any] = CITY, **extra: Any) -> dict[str, Any]:
    """A function tool as a Realtime, Live or Responses client declares it."""
    return {
        "type": "function",
        "name": name,
        "description": description,
        "parameters": copy.deepcopy(parameters),
        **extra,
    }


def chat_tool(name: str, description: str, parameters: dict[str, Any] = CITY, **extra: Any) -> dict[str, Any]:
    """The same tool as chat-completions takes it (``extra``, e.g. ``strict``, beside the parameters)."""
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": copy.deepcopy(parameters), **extra},
    }


WEATHER = function_tool("get_weather", "The weather in a city.")
CHAT_WEATHER = chat_tool("get_weather", "The weather in a city.")
GET_TIME = function_tool("get_time", "The current time in a city.")
CHAT_GET_TIME = chat_tool("get_time", "The current time in a city.")

# The nested Responses events of a delegation that calls one function (short arguments: one delta).
FUNCTION_CALL_STREAM = [
    "response.created",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


def text_reply_stream(deltas: int) -> list[str]:
    """The nested Responses events of a text reply in ``deltas`` pieces, after its response.created."""
    return [
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
