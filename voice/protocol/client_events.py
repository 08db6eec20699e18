"""Client events: parsed from JSON and checked against the openai SDK's model for their type.

The SDK's own pydantic models are the schema of what a client may send, per dialect; an event
that does not fit becomes a ProtocolError naming the parameter the client got wrong (see
validation.py for how strictly).
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import pydantic
from openai.types.beta.realtime.realtime_client_event import RealtimeClientEvent as BetaClientEvent
from openai.types.realtime.realtime_client_event import RealtimeClientEvent as GAClientEvent

from . import validation
from .dialect import Dialect
from .errors import ProtocolError


def _models_by_type(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


_CLIENT_MODELS = {Dialect.GA: _models_by_type(GAClientEvent), Dialect.BETA: _models_by_type(BetaClientEvent)}

_MODALITIES = pydantic.TypeAdapter(list[Literal["text", "audio"]])
_MAX_TOKENS = pydantic.TypeAdapter(int | Literal["inf"])
# `response.create` settings that the other dialect names differently: this server has always read
# both names, so both are accepted (and checked like the dialect's own).
_RESPONSE_ALIASES = {
    Dialect.GA: {"response.modalities": _MODALITIES, "response.max_response_output_tokens": _MAX_TOKENS},
    Dialect.BETA: {"response.output_modalities": _MODALITIES, "response.max_output_tokens": _MAX_TOKENS},
}


def parse(text: str | bytes) -> dict[str, Any]:
    """A JSON object, or ProtocolError (`invalid_event`)."""
    return validation.parse_object(text)


def event_id(event: dict[str, Any]) -> str | None:
    """The client's id for the event, when it gave a usable one (to name the event in errors)."""
    value = event.get("event_id")
    return value if isinstance(value, str) else None


def check_type(event: dict[str, Any]) -> None:
    if "type" not in event:
        raise ProtocolError("invalid_event", "Missing required parameter: 'type'.", param="type")
    if not isinstance(event["type"], str):
        raise ProtocolError("invalid_event", "Invalid type for 'type': expected a string.", param="type")


def validate(event: dict[str, Any], dialect: Dialect) -> pydantic.BaseModel | None:
    """Check a client event against the SDK's model for its type in this dialect; the parsed model.

    `session.update` is checked here only as an envelope: its `session` is checked (against the
    dialect's session model) by session_config, which also fills in the GA `session.type`.
    """
    model = _CLIENT_MODELS[dialect].get(event["type"])
    if model is None:
        return None
    if event["type"] == "session.update":
        _check_envelope(event, {"type", "event_id", "session"})
        if "session" not in event:
            raise ProtocolError("missing_required_parameter", "Missing required parameter: 'session'.", param="session")
        if not isinstance(event["session"], dict):
            raise validation.invalid_type(("session",), "an object", event["session"])
        return None
    return validation.check_model(model, event, dialect, extras=_RESPONSE_ALIASES[dialect])


def _check_envelope(event: dict[str, Any], allowed: set[str]) -> None:
    for key in event:
        if key not in allowed:
            raise ProtocolError("unknown_parameter", f"Unknown parameter: '{key}'.", param=key)
    if event.get("event_id") is not None and not isinstance(event["event_id"], str):
        raise validation.invalid_type(("event_id",), "a string", event["event_id"])
