"""Strict validation of server events against the openai SDK's own models, per dialect.

The SDK parses leniently (an unknown type becomes the union's first member, extra keys pass), so
"the SDK didn't crash" proves little. Here each event's `type` must be in its dialect's union, the
event must validate against that type's model, and no object may carry a key the model does not
declare, except the few session keys OpenAI itself sends beyond the SDK's session model.
"""

from __future__ import annotations

import typing
from typing import Any

import pydantic
from openai.types.beta.realtime.realtime_server_event import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GAServerEvent

from voice.protocol import Dialect

# Keys OpenAI sends in `session` that the SDK's session models leave out (docs/protocol-mapping.md).
SESSION_EXTRAS = {"id", "object", "expires_at", "client_secret"}


def _by_type(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


MODELS = {Dialect.GA: _by_type(GAServerEvent), Dialect.BETA: _by_type(BetaServerEvent)}


def strict(event: dict[str, Any], dialect: Dialect) -> pydantic.BaseModel:
    """Validate one server event; AssertionError says what is wrong."""
    assert isinstance(event.get("event_id"), str) and event["event_id"].startswith("event_"), event
    model = MODELS[dialect].get(event["type"])
    assert model is not None, f"{event['type']!r} is not a {dialect.value} server event"
    try:
        parsed = model.model_validate(event)
    except pydantic.ValidationError as exc:
        raise AssertionError(f"{event['type']} does not validate: {exc}") from None
    _no_extras(parsed, event["type"])
    return parsed


def _no_extras(value: Any, path: str) -> None:
    if isinstance(value, pydantic.BaseModel):
        extras = set(value.model_extra or {})
        if path.endswith(".session"):
            extras -= SESSION_EXTRAS
        assert not extras, f"{path} carries undeclared keys {sorted(extras)}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for index, element in enumerate(value):
            _no_extras(element, f"{path}[{index}]")
