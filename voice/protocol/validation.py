"""Validation of client input by type, before any of it is used.

Everything a client sends passes three checks here, each turning a mistake into a ProtocolError
that names the offending parameter by its dotted path (``session.audio.input``,
``item.content[0].text``) with one of OpenAI's codes:

- the raw JSON (``check_json``): no nesting deeper than MAX_JSON_DEPTH (checked on the text, before
  the parser can recurse), no number that does not fit a 64-bit integer or a finite double, no
  string that is not valid Unicode (a lone surrogate cannot be stored or encoded as UTF-8);
- the openai SDK's pydantic model for the event or setting (``check_model``), in strict mode (no
  "5" for 5, no true for 1): `invalid_type`, `invalid_value`, `missing_required_parameter`;
- what those models are too lenient about, as they describe server responses (every field
  optional, unknown keys kept): `null` where the SDK's request types (the ``*_param`` TypedDicts)
  do not allow it is `invalid_type`, and an undeclared key is `unknown_parameter`, since what a
  client sends is echoed back in server events that must match the SDK's models exactly.
"""

from __future__ import annotations

import collections.abc
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pydantic
import typing_extensions
from openai.types.beta.realtime.realtime_client_event_param import RealtimeClientEventParam as BetaClientEventParam
from openai.types.realtime.realtime_client_event_param import RealtimeClientEventParam as GAClientEventParam
from pydantic_core import ErrorDetails

from .dialect import Dialect
from .errors import ProtocolError

# Deeper JSON is refused before it is parsed; real events nest less than half as deep (a tool's
# JSON Schema `parameters` being the deepest part).
MAX_JSON_DEPTH = 32
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

Path = tuple[str | int, ...]


def param_name(path: Iterable[str | int]) -> str:
    """A parameter's name as OpenAI writes it: ``session.tools[0].name`` (long keys shortened)."""
    name = ""
    for step in path:
        name += f"[{step}]" if isinstance(step, int) else (f".{shown(step)}" if name else shown(step))
    return name


def shown(text: str, limit: int = 64) -> str:
    """A client's string as an error message quotes it: not all of it when it is long."""
    return text if len(text) <= limit else text[:limit] + "..."


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, as an error message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def invalid_type(path: Path, expected: str, value: Any) -> ProtocolError:
    name = param_name(path)
    return ProtocolError(
        "invalid_type",
        f"Invalid type for '{name}': expected {expected}, but got {json_type(value)} instead.",
        param=name,
    )


# --- the raw JSON -----------------------------------------------------------------------------


class BadNumber:
    """A JSON number the parser kept as text because no int64 or finite double holds it.

    It is never a valid value: ``check_json`` refuses it with its path, after the event's
    `event_id` has been read (a parser error would lose the id).
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"BadNumber({self.text[:20]!r})"


def _parse_int(text: str) -> int | BadNumber:
    if len(text) > 20:  # past int64 whatever the digits; int() of thousands of digits even raises
        return BadNumber(text)
    value = int(text)
    return value if _INT_MIN <= value <= _INT_MAX else BadNumber(text)


def _parse_float(text: str) -> float | BadNumber:
    value = float(text)
    return value if math.isfinite(value) else BadNumber(text)


# A string, from its opening quote to its closing one, or to the end of the text when it is not
# closed (then the JSON is invalid anyway). Possessive, so it never backtracks: each string is
# consumed once, in C, and the whole strip is linear in the text's length.
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)
# What each byte does to the nesting depth: +1 for [ and {, -1 for ] and }.
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than ``limit``, brackets inside
    strings not counted. Linear in the text (strings are cut out by one regular expression, the
    rest is counted by numpy), and cheap for the usual event, which has few brackets."""
    if text.count("[") + text.count("{") <= limit:
        return False
    rest = np.frombuffer(_STRING.sub("", text).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    return int(np.cumsum(_DEPTH_STEP[rest], dtype=np.int64).max(initial=0)) > limit


def parse_object(text: str | bytes) -> dict[str, Any]:
    """A client event: a JSON object (see ``parse``), or ProtocolError (`invalid_event`)."""
    event = parse(text)
    if not isinstance(event, dict):
        raise ProtocolError("invalid_event", "An event must be a JSON object.")
    return event


def parse(text: str | bytes) -> Any:
    """JSON text to Python values, refusing nesting deeper than MAX_JSON_DEPTH (`invalid_event`).

    Numbers that no int64 or finite double holds become BadNumber (refused by ``check_json``
    with their path), so that the event still parses and its `event_id` can be named.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
        except (UnicodeDecodeError, LookupError):
            raise ProtocolError(
                "invalid_event", "The server could not parse the event: it is not valid UTF-8."
            ) from None
    if not isinstance(text, str):
        raise ProtocolError("invalid_event", "An event must be JSON text.")
    if json_depth_exceeds(text):
        raise ProtocolError(
            "invalid_event",
            f"The server could not parse the event: it nests arrays and objects more than {MAX_JSON_DEPTH} deep.",
        )
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=BadNumber)
    except (ValueError, RecursionError):
        raise ProtocolError("invalid_event", "The server could not parse the event: it is not valid JSON.") from None


def check_json(value: Any, path: Path = ()) -> None:
    """Refuse numbers out of range and strings that are not valid Unicode, naming where they are."""
    if isinstance(value, str):
        if not value.isascii() and not _is_unicode(value):
            name = param_name(path) or None
            raise ProtocolError(
                "invalid_value",
                f"Invalid value for '{name}': the string is not valid Unicode (it has a lone surrogate).",
                param=name,
            )
    elif isinstance(value, BadNumber):
        name = param_name(path) or None
        raise ProtocolError(
            "invalid_value",
            f"Invalid value for '{name}': the number is out of range (integers must fit in 64 bits, "
            "other numbers must be finite).",
            param=name,
        )
    elif isinstance(value, dict):
        for key, element in value.items():
            check_json(key, path)
            check_json(element, (*path, key))
    elif isinstance(value, list):
        for index, element in enumerate(value):
            check_json(element, (*path, index))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- against the SDK's models -----------------------------------------------------------------

# pydantic error types that mean the JSON type was wrong, and how the expected type reads.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "tuple_type": "an array",
    "iterable_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "typed_dict_type": "an object",
}


def check_model(
    model: type[pydantic.BaseModel] | pydantic.TypeAdapter[Any],
    data: Any,
    dialect: Dialect,
    *,
    prefix: Path = (),
    extras: Mapping[str, pydantic.TypeAdapter[Any]] | None = None,
) -> Any:
    """Validate ``data`` against an SDK model (or type adapter) strictly; return the validated value.

    ``prefix`` is where ``data`` sits in the client event (``("session",)``) and ``extras`` maps
    keys the SDK model does not declare but this server accepts (by path template, list indices
    as ``[]``) to their type.
    """
    try:
        if isinstance(model, pydantic.TypeAdapter):
            validated = model.validate_python(data, strict=True)
        else:
            validated = model.model_validate(data, strict=True)
    except pydantic.ValidationError as exc:
        raise error_from_pydantic(exc.errors(), data, prefix) from None
    _walk(validated, data, prefix, _template(prefix), dialect, extras or {})
    return validated


def error_from_pydantic(errors: list[ErrorDetails], data: Any, prefix: Path = ()) -> ProtocolError:
    """The ProtocolError for the error that matters to the client among pydantic's."""
    first = _relevant_error(errors)
    path = (*prefix, *_input_path(data, first["loc"]))
    if first["type"] == "missing":
        # The missing key is not in the input, so only its parent's path can be walked.
        parent = _input_path(data, first["loc"][:-1])
        name = param_name((*prefix, *parent, first["loc"][-1]))
        return ProtocolError("missing_required_parameter", f"Missing required parameter: '{name}'.", param=name)
    value = first.get("input")
    expected = _EXPECTED.get(first["type"])
    if expected is None and first["type"] in ("literal_error", "enum") and not isinstance(value, str):
        expected = "a string"  # every Literal of the protocol is a string: another JSON type is a type error
    if expected is None and first["type"] == "union_tag_invalid":
        expected = "an object"
    if expected is not None and json_type(value) != expected:
        return invalid_type(path, expected, value)
    name = param_name(path) or None
    return ProtocolError("invalid_value", f"Invalid value for '{name}': {first['msg']}.", param=name)


def _relevant_error(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error inside the union member that the client picked by its `type` (or `role`).

    For a union such as turn_detection (server_vad | semantic_vad) pydantic reports every member's
    errors, the first often being "type should be 'server_vad'" for a semantic_vad input. Errors under
    a member whose discriminator did not match are not the client's mistake, so they are passed over;
    when no member matched, the discriminator itself is what is wrong.
    """
    mismatches = [e for e in errors if e["type"] == "literal_error" and e["loc"][-1:] in (("type",), ("role",))]
    ruled_out = [e["loc"][:-1] for e in mismatches]
    for error in errors:
        if not any(error["loc"][: len(prefix)] == prefix for prefix in ruled_out):
            return error
    return mismatches[0] if mismatches else errors[0]


def _input_path(data: Any, loc: tuple[Any, ...]) -> list[Any]:
    """The part of a pydantic error location that names real keys of the input.

    pydantic adds union member tags (class names, ``literal[...]``) to the location; those are not
    parameters a client sent, so walk the input and keep only the steps that exist in it.
    """
    path: list[Any] = []
    node = data
    for step in loc:
        if isinstance(node, dict) and step in node:
            path.append(step)
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            path.append(step)
            node = node[step]
    return path


def _template(path: Path) -> str:
    """A path with its list indices blanked (``session.tools[].name``): the key of the tables of
    nullable parameters and accepted extras."""
    return "".join(
        "[]" if isinstance(step, int) else (f".{step}" if index else step) for index, step in enumerate(path)
    )


def _walk(validated: Any, data: Any, path: Path, template: str, dialect: Dialect, extras: Mapping[str, Any]) -> None:
    """Refuse what the SDK models let through: undeclared keys, and null where null is not allowed."""
    if isinstance(validated, pydantic.BaseModel) and isinstance(data, dict):
        fields = type(validated).model_fields
        not_given: list[str] = []
        for key, value in data.items():
            here = (*path, key)
            key_template = f"{template}.{key}" if template else key
            if key not in fields:
                if key_template in extras:
                    check_model(extras[key_template], value, dialect, prefix=here)
                    continue
                name = param_name(here)
                raise ProtocolError("unknown_parameter", f"Unknown parameter: '{name}'.", param=name)
            if value is None:
                annotation = fields[key].annotation
                if key_template in nullable(dialect) or _free_form(annotation):
                    continue
                if key_template in _NULL_IS_NOT_GIVEN and not fields[key].is_required():
                    not_given.append(key)
                    continue
                raise invalid_type(here, _describe(annotation), None)
            _walk(getattr(validated, key), value, here, key_template, dialect, extras)
        for key in not_given:
            del data[key]
    elif isinstance(validated, list) and isinstance(data, list):
        for index, (element, raw) in enumerate(zip(validated, data, strict=False)):
            _walk(element, raw, (*path, index), f"{template}[]", dialect, extras)


def _strip_optional(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _free_form(annotation: Any) -> bool:
    """``object`` and ``Any`` hold any JSON value, null included."""
    return any(a in (object, Any) for a in _strip_optional(annotation))


def _describe(annotation: Any) -> str:
    """The JSON type(s) a field takes, for an `invalid_type` message."""
    names: list[str] = []
    for member in _strip_optional(annotation):
        origin = typing.get_origin(member)
        if origin in (typing.Union, types.UnionType):
            name = _describe(member)
        elif origin is typing.Literal or member is str:
            name = "a string"
        elif member is bool:
            name = "a boolean"
        elif member is int:
            name = "an integer"
        elif member is float:
            name = "a number"
        elif origin in (list, tuple) or member in (list, tuple):
            name = "an array"
        else:
            name = "an object"
        if name not in names:
            names.append(name)
    return " or ".join(names)


# --- where null is allowed --------------------------------------------------------------------

# Null is allowed where the SDK's request types say Optional, and where OpenAI documents it although
# the generated types forget it ("can be set to null to turn off"), or where the session this server
# announces itself shows null (a client may send back what it was shown).
_NULLABLE_EXTRA = {
    Dialect.GA: {
        "event_id",
        "previous_item_id",
        "session.include",
        "session.audio.input.transcription",
        "session.audio.input.noise_reduction",
    },
    Dialect.BETA: {
        "event_id",
        "previous_item_id",
        "session.turn_detection",
        "session.input_audio_transcription",
        "session.input_audio_noise_reduction",
        "session.tracing",
        "session.client_secret",
    },
}
_CLIENT_PARAMS = {Dialect.GA: GAClientEventParam, Dialect.BETA: BetaClientEventParam}

# response.create's parameters that a client may send as null to mean "not given": LiveKit builds
# the event with the SDK's pydantic model and sends its unset fields as null (after every tool
# call: `"instructions": null, "tool_choice": "auto"`), and OpenAI answers it. The key is dropped.
_NULL_IS_NOT_GIVEN = frozenset(
    f"response.{name}"
    for name in (
        "instructions",
        "tools",
        "tool_choice",
        "metadata",
        "modalities",
        "output_modalities",
        "voice",
        "audio",
        "conversation",
        "input",
        "max_output_tokens",
        "max_response_output_tokens",
        "temperature",
        "output_audio_format",
        "prompt",
    )
)
_NULLABLE: dict[Dialect, frozenset[str]] = {}


def nullable(dialect: Dialect) -> frozenset[str]:
    """Parameter templates (``session.tools[].description``) that may be null in this dialect."""
    if dialect not in _NULLABLE:
        found: set[str] = set()
        optional_paths(_CLIENT_PARAMS[dialect], "", found, 0)
        _NULLABLE[dialect] = frozenset(found | _NULLABLE_EXTRA[dialect])
    return _NULLABLE[dialect]


def optional_paths(annotation: Any, path: str, found: set[str], depth: int = 0) -> None:
    """Collect the paths of the SDK request TypedDicts whose type includes None (both protocols'
    client events: where `null` is a value the client may send)."""
    if depth > 16:
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing_extensions.Required, typing_extensions.NotRequired, typing.Annotated):
        optional_paths(args[0], path, found, depth)
    elif origin in (typing.Union, types.UnionType):
        if type(None) in args:
            found.add(path)
        for member in args:
            optional_paths(member, path, found, depth + 1)
    elif origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence) or (
        getattr(origin, "__name__", "") == "SequenceNotStr"
    ):
        optional_paths(args[0], f"{path}[]", found, depth + 1)
    elif typing_extensions.is_typeddict(annotation):
        for key, member in typing_extensions.get_type_hints(annotation, include_extras=True).items():
            optional_paths(member, f"{path}.{key}" if path else key, found, depth + 1)


def string_too_long(path: Path, value: str, limit: int) -> ProtocolError:
    """A string longer than the server can keep (it is stored in a column of bounded size)."""
    name = param_name(path)
    return ProtocolError(
        "string_above_max_length",
        f"Invalid '{name}': string too long. Expected a string with maximum length {limit}, "
        f"but got a string with length {len(value)} instead.",
        param=name,
    )
