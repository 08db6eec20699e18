"""Client events: parsed from JSON and checked against the openai SDK's model for their type.

The SDK's own pydantic models are the schema of what a client may send, per dialect; an event
that does not fit becomes a ProtocolError naming the parameter the client got wrong.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pydantic
from openai.types.beta.realtime.realtime_client_event import RealtimeClientEvent as BetaClientEvent
from openai.types.realtime.realtime_client_event import RealtimeClientEvent as GAClientEvent

from . import session_config
from .dialect import Dialect
from .errors import ProtocolError


def _models_by_type(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


_CLIENT_MODELS = {Dialect.GA: _models_by_type(GAClientEvent), Dialect.BETA: _models_by_type(BetaClientEvent)}


def parse(text: str | bytes) -> dict[str, Any]:
    """A JSON object, or ProtocolError (`invalid_event`)."""
    try:
        event = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("invalid_event", "The server could not parse the event: it is not valid JSON.") from None
    if not isinstance(event, dict):
        raise ProtocolError("invalid_event", "An event must be a JSON object.")
    return event


def check_type(event: dict[str, Any]) -> None:
    if "type" not in event:
        raise ProtocolError("invalid_event", "Missing required parameter: 'type'.", param="type")
    if not isinstance(event["type"], str):
        raise ProtocolError("invalid_event", "Invalid type for 'type': expected a string.", param="type")


def validate(event: dict[str, Any], dialect: Dialect) -> None:
    """Check a client event against the SDK's model for its type in this dialect."""
    model = _CLIENT_MODELS[dialect].get(event["type"])
    if model is None:
        return
    try:
        model.model_validate(event)
    except pydantic.ValidationError as exc:
        first = session_config._relevant_error(exc.errors())
        path = session_config._input_path(event, first["loc"])
        param = ".".join(str(p) for p in path) or None
        if first["type"] == "missing":
            # The missing key is not in the input, so only its parent's path can be walked.
            parent = session_config._input_path(event, first["loc"][:-1])
            missing = ".".join(str(p) for p in [*parent, first["loc"][-1]])
            raise ProtocolError("missing_required_parameter", f"Missing required parameter: '{missing}'.", param=missing) from None
        raise ProtocolError("invalid_value", f"Invalid value for '{param}': {first['msg']}.", param=param) from None
