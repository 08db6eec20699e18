"""Live client events: parsed, then checked by type against the openai SDK's `openai.types.live` models.

The SDK's pydantic models (``ClientEvent`` members) are the schema; they are validated in strict
mode (no "5" for 5), and what they are lenient about is refused here too: a key the model does not
declare (`unknown_parameter`), null where the SDK's request TypedDicts (``ClientEventParam``) do
not allow it (`invalid_type`), and a missing `delegation_id` on the appends ("Required, nullable"),
which the response-side model defaults to None. The raw JSON checks (depth, huge numbers, lone
surrogates) and the pydantic-to-ProtocolError mapping are voice.protocol.validation's.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import pydantic
from openai.types.live.client_event import ClientEvent
from openai.types.live.client_event_param import ClientEventParam

from voice.protocol import validation
from voice.protocol.errors import ProtocolError

Path = tuple[str | int, ...]

MODELS: dict[str, type[pydantic.BaseModel]] = {
    typing.get_args(m.model_fields["type"].annotation)[0]: m for m in typing.get_args(typing.get_args(ClientEvent)[0])
}
# Events whose `delegation_id` must be present, though it may be null.
NEEDS_DELEGATION_ID = {"session.instructions.append", "session.thinking.append", "session.commentary.append"}


def _nullable() -> frozenset[str]:
    found: set[str] = set()
    validation.optional_paths(ClientEventParam, "", found)
    return frozenset(found)


NULLABLE = _nullable()


def parse(text: str | bytes) -> dict[str, Any]:
    """A JSON object (depth-limited, huge numbers kept for check_json), or ProtocolError."""
    return validation.parse_object(text)


def event_id(event: dict[str, Any]) -> str | None:
    value = event.get("event_id")
    return value if isinstance(value, str) and value else None


def check(event: dict[str, Any]) -> pydantic.BaseModel:
    """Check the raw JSON, the `type` and the event against the SDK's model; the validated model."""
    validation.check_json(event)
    if "type" not in event:
        raise ProtocolError("invalid_event", "Missing required parameter: 'type'.", param="type")
    kind = event["type"]
    if not isinstance(kind, str):
        raise validation.invalid_type(("type",), "a string", kind)
    model = MODELS.get(kind)
    if model is None:
        raise ProtocolError(
            "invalid_value",
            f"Invalid value: '{validation.shown(kind)}'. Supported values are: {', '.join(sorted(MODELS))}.",
            param="type",
        )
    validated = check_model(model, event)
    if kind in NEEDS_DELEGATION_ID and "delegation_id" not in event:
        raise ProtocolError(
            "missing_required_parameter", "Missing required parameter: 'delegation_id'.", param="delegation_id"
        )
    return validated


def check_model(model: type[pydantic.BaseModel] | pydantic.TypeAdapter[Any], data: Any, prefix: Path = ()) -> Any:
    """Strict validation of ``data`` (found at ``prefix``), then undeclared keys and nulls refused."""
    try:
        if isinstance(model, pydantic.TypeAdapter):
            validated = model.validate_python(data, strict=True)
        else:
            validated = model.model_validate(data, strict=True)
    except pydantic.ValidationError as exc:
        raise _error(exc, data, prefix) from None
    _walk(validated, data, prefix)
    return validated


def _error(exc: pydantic.ValidationError, data: Any, prefix: Path) -> ProtocolError:
    """voice.protocol's mapping, except that an integer for an integer Literal (`rate: 8000` where
    16000 or 24000 is allowed) is a wrong value, not a wrong type."""
    error = validation.error_from_pydantic(exc.errors(), data, prefix)
    for detail in exc.errors():
        value = detail.get("input")
        if detail["type"] == "literal_error" and isinstance(value, int) and not isinstance(value, bool):
            expected = (detail.get("ctx") or {}).get("expected", "")
            if any(ch.isdigit() for ch in str(expected)) and error.code == "invalid_type":
                return ProtocolError(
                    "invalid_value", f"Invalid value for '{error.param}': expected {expected}.", param=error.param
                )
    return error


def _template(path: Path) -> str:
    return "".join("[]" if isinstance(s, int) else (f".{s}" if i else s) for i, s in enumerate(path))


def _walk(validated: Any, data: Any, path: Path) -> None:
    if isinstance(validated, pydantic.BaseModel) and isinstance(data, dict):
        fields = type(validated).model_fields
        for key, value in data.items():
            here = (*path, key)
            if key not in fields:
                name = validation.param_name(here)
                raise ProtocolError("unknown_parameter", f"Unknown parameter: '{name}'.", param=name)
            if value is None:
                if _template(here) not in NULLABLE and not _free_form(fields[key].annotation):
                    raise validation.invalid_type(here, "a value", None)
                continue
            _walk(getattr(validated, key), value, here)
    elif isinstance(validated, list) and isinstance(data, list):
        for index, (element, raw) in enumerate(zip(validated, data, strict=False)):
            _walk(element, raw, (*path, index))


def _free_form(annotation: Any) -> bool:
    """``object`` and ``Any`` (a tool's JSON schema, say) hold any JSON value, null included."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_free_form(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation in (object, Any)
