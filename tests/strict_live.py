"""Strict validation of Live server events against the openai SDK's `openai.types.live` models.

The SDK parses server events without validating them (an unknown type even becomes a
`SessionStartedEvent`), so here each event's `type` must be a primary-WebSocket member of
``ServerEvent`` (no sideband-only events), it must validate against that model, and no object
may carry a key the model does not declare.
"""

from __future__ import annotations

import typing
from typing import Any

import pydantic
from openai.types.live.server_event import ServerEvent
from openai.types.responses import ResponseStreamEvent

MODELS: dict[str, type[pydantic.BaseModel]] = {
    typing.get_args(m.model_fields["type"].annotation)[0]: m for m in typing.get_args(typing.get_args(ServerEvent)[0])
}
SIDEBAND_ONLY = {"session.input_audio.append"} | {t for t in MODELS if t.startswith("transport.")}
ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ServerEvent)
RESPONSE_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


def strict_live(event: dict[str, Any]) -> pydantic.BaseModel:
    """Validate one server event; AssertionError says what is wrong."""
    kind = event.get("type")
    assert kind in MODELS and kind not in SIDEBAND_ONLY, f"{kind!r} is not a primary Live server event"
    if kind == "session.output_audio.delta":
        assert set(event) == {"type", "delta"}, event.keys()
    else:
        assert isinstance(event.get("event_id"), str) and event["event_id"].startswith("event_"), event
    try:
        parsed = MODELS[kind].model_validate(event)
        ADAPTER.validate_python(event)
    except pydantic.ValidationError as exc:
        raise AssertionError(f"{kind} does not validate: {exc}") from None
    _no_extras(parsed, kind)
    return parsed


def strict_live_nested(event: dict[str, Any]) -> None:
    """``strict_live``, and the Responses streaming event a ``response.event`` carries (delegation)
    validated against the SDK's ``ResponseStreamEvent``, with no undeclared keys either."""
    strict_live(event)
    if event["type"] == "response.event":
        nested = event["event"]
        try:
            parsed = RESPONSE_EVENT.validate_python(nested)
        except pydantic.ValidationError as exc:
            raise AssertionError(f"nested {nested.get('type')} does not validate: {exc}") from None
        _no_extras(parsed, str(nested.get("type")))


def _no_extras(value: Any, path: str) -> None:
    if isinstance(value, pydantic.BaseModel):
        extras = set(value.model_extra or {})
        assert not extras, f"{path} carries undeclared keys {sorted(extras)}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for index, element in enumerate(value):
            _no_extras(element, f"{path}[{index}]")
