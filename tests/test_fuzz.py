"""Property-based fuzzing of RealtimeSession.receive, in both dialects, with no server.

Client events are generated from the openai SDK's own client-event request types (the ``*_param``
TypedDicts of ``openai.types.realtime`` for GA and ``openai.types.beta.realtime`` for beta), then
some are mutated: a field dropped, a value replaced by null, a wrong type, a huge string, deep
nesting, a number out of range, odd Unicode, NUL bytes; and raw text that is not JSON at all. For
every case the session must answer without raising and without a `server_error` (the last-resort
guard firing means a crash was only caught), say something unless the event legitimately answers
nothing, name the offending parameter and the client's `event_id` in every error, and send only
events that validate strictly against the SDK's server-event models. The model is then stepped a
few times, so that whatever configuration was accepted also reaches the output path.

Runs are reproducible (``derandomize``) and quick: a few hundred examples per test.
"""

from __future__ import annotations

import base64
import collections.abc
import copy
import json
import types
import typing
from typing import Any

import numpy as np
import pytest
import typing_extensions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.beta.realtime.realtime_client_event_param import RealtimeClientEventParam as BetaClientEventParam
from openai.types.realtime.realtime_client_event_param import RealtimeClientEventParam as GAClientEventParam

from voice.protocol import Dialect, RealtimeSession, SessionOptions
from voice.protocol.audio import FRAME_SAMPLES
from voice.protocol.responses import ResponsePolicy
from voice.protocol.validation import json_depth_exceeds

from .strict import strict

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
DIALECTS = pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA], ids=["ga", "beta"])
PARAMS = {Dialect.GA: GAClientEventParam, Dialect.BETA: BetaClientEventParam}

# Events that may legitimately answer nothing: audio goes to the model, and this server has no
# output audio buffer to clear.
SILENT = {"input_audio_buffer.append", "output_audio_buffer.clear"}
# Error codes that always name a parameter.
NAMED = {
    "invalid_type",
    "invalid_value",
    "missing_required_parameter",
    "unknown_parameter",
    "string_above_max_length",
    "unsupported_audio_format",
    "instructions_too_large",
    "tools_too_large",
    "item_too_large",
    "metadata_too_large",
    "session_too_large",
    "conversation_full",
    "conversation_too_large",
    "item_retrieve_invalid_item_id",
    "item_delete_invalid_item_id",
    "item_truncate_invalid_item_id",
}

LOUD = (0.5 * np.sin(np.arange(FRAME_SAMPLES) * 0.1)).astype(np.float32)
QUIET = np.zeros(FRAME_SAMPLES, dtype=np.float32)

# --- strategies from the SDK's request types ------------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
ITEM_IDS = st.sampled_from(["item_a", "item_b", "msg_1", "root", ""])
AUDIO = st.sampled_from(
    [base64.b64encode(np.full(n, 500, dtype="<i2").tobytes()).decode() for n in (0, 1, 480, 1920, 4800)]
) | st.text(max_size=12)

# Realistic values for fields random text would almost never get right, so that valid events (and
# the state they build: items to truncate, responses to cancel) are generated too.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "audio": AUDIO,
    "item_id": ITEM_IDS,
    "previous_item_id": ITEM_IDS | st.none(),
    "id": ITEM_IDS,
    "event_id": st.sampled_from(["evt_1", "response_create_2", ""]) | st.text(max_size=8),
    "audio_end_ms": st.integers(min_value=-10, max_value=1000),
    "content_index": st.integers(min_value=-1, max_value=2),
    "threshold": st.floats(min_value=-0.5, max_value=1.5),
    "speed": st.floats(min_value=0.0, max_value=2.0),
    "max_output_tokens": st.sampled_from(["inf", 1, 10, 4096, 0, 5000]),
    "max_response_output_tokens": st.sampled_from(["inf", 1, 10, 4096, 0, 5000]),
}


def _sequence_origin(origin: Any) -> bool:
    return origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence) or (
        getattr(origin, "__name__", "") == "SequenceNotStr"
    )


def _required(typed_dict: Any, hint: Any) -> bool:
    """From the hint itself: ``__required_keys__`` misses Required[...] written as a string annotation."""
    origin = typing.get_origin(hint)
    if origin is typing_extensions.Required:
        return True
    return origin is not typing_extensions.NotRequired and typed_dict.__total__


def from_param(annotation: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON values of an SDK request type: st.from_type for the scalars, built for the rest
    (TypedDicts with their required and optional keys, unions, literals, iterables, `object`)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if depth > 10:
        return JSON_LEAVES
    if origin in (typing_extensions.Required, typing_extensions.NotRequired, typing.Annotated):
        return from_param(args[0], depth)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([from_param(member, depth + 1) for member in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if _sequence_origin(origin):
        return st.lists(from_param(args[0], depth + 1), max_size=3)
    if origin in (dict, collections.abc.Mapping):
        return st.dictionaries(st.text(max_size=10), from_param(args[1], depth + 1), max_size=3)
    if typing_extensions.is_typeddict(annotation):
        hints = typing_extensions.get_type_hints(annotation, include_extras=True)
        required = {key for key, hint in hints.items() if _required(annotation, hint)}

        def field(key: str) -> st.SearchStrategy[Any]:
            generated = from_param(hints[key], depth + 1)
            return st.one_of(FIELDS[key], generated) if key in FIELDS else generated

        return st.fixed_dictionaries(
            {key: field(key) for key in hints if key in required},
            optional={key: field(key) for key in hints if key not in required},
        )
    if annotation is type(None):
        return st.none()
    if annotation is str:
        return st.text(max_size=20)
    if annotation in (int, float, bool):
        return st.from_type(annotation).filter(lambda v: not isinstance(v, float) or np.isfinite(v))
    return JSON_VALUES  # object, Any


EVENTS = {
    dialect: st.one_of([from_param(member) for member in typing.get_args(PARAMS[dialect])]) for dialect in Dialect
}

# --- mutations -----------------------------------------------------------------------------------

DEEP = "@@DEEP@@"  # replaced in the text by 10,000 nested arrays (json.dumps would recurse)
FORTY_DEEP: list[Any] = []
for _ in range(39):
    FORTY_DEEP = [FORTY_DEEP]
HUGE_NUMBER = "@@HUGE_NUMBER@@"  # and these by what they name (kept out of Hypothesis' reports)
HUGE_ASCII = "@@HUGE_ASCII@@"
HUGE_UTF8 = "@@HUGE_UTF8@@"
PLACEHOLDERS = {
    DEEP: "[" * 10_000 + "]" * 10_000,
    HUGE_NUMBER: "9" * 5000,
    HUGE_ASCII: json.dumps("x" * 100_000),
    HUGE_UTF8: json.dumps("é" * 50_000, ensure_ascii=False),
}
WRONG = st.sampled_from(
    [
        None,
        0,
        -1,
        1.5,
        True,
        "",
        "x",
        [],
        {},
        [None],
        {"a": 1},
        10**30,  # past int64
        float("inf"),
        float("nan"),
        -(10**20),
        1e308,
        HUGE_ASCII,
        HUGE_UTF8,
        "nul\x00byte",
        "lone \ud800 surrogate",
        "\U0001f600\u202e\u0301",
        FORTY_DEEP,
        DEEP,
        HUGE_NUMBER,
    ]
)


def paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, the root included."""
    found = [path]
    if isinstance(value, dict):
        for key, element in value.items():
            found.extend(paths(element, (*path, key)))
    elif isinstance(value, list):
        for index, element in enumerate(value):
            found.extend(paths(element, (*path, index)))
    return found


def mutate(event: dict[str, Any], path: tuple[Any, ...], action: str, replacement: Any) -> Any:
    if not path:
        return replacement if action == "replace" else event
    parent: Any = event
    for step in path[:-1]:
        parent = parent[step]
    if action == "drop":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent["unexpected_" + str(path[-1])] = replacement
    else:
        parent[path[-1]] = replacement
    return event


def to_text(value: Any) -> str:
    text = json.dumps(value)  # NaN and Infinity as Python writes them; lone surrogates escaped
    for placeholder, replacement in PLACEHOLDERS.items():
        text = text.replace(json.dumps(placeholder), replacement)
    return text


@st.composite
def mutated_events(draw: st.DrawFn, dialect: Dialect) -> str:
    """A generated event with one to three places changed: dropped, or null, or something else."""
    event: Any = draw(EVENTS[dialect])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not isinstance(event, dict):
            break
        path = draw(st.sampled_from(paths(event)))
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        event = mutate(event, path, action, draw(st.none() | WRONG))
    return to_text(event)


RAW_TEXT = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=50).map(lambda raw: raw.decode("latin-1")),
    st.sampled_from(["", " ", "null", "[]", "{}", "1", '"type"', "{'type': 1}", '{"type": "a"', "\x00", "\ufeff{}"]),
)


@st.composite
def broken_json(draw: st.DrawFn, dialect: Dialect) -> str:
    """A generated event's JSON cut short or with a character changed."""
    text = json.dumps(draw(EVENTS[dialect]))
    cut = draw(st.integers(min_value=0, max_value=len(text)))
    if draw(st.booleans()):
        return text[:cut]
    return text[:cut] + draw(st.sampled_from(["{", "]", '"', "\\", ",", "\x00", "NaN"])) + text[cut + 1 :]


# --- the properties ------------------------------------------------------------------------------


def new_session(dialect: Dialect) -> RealtimeSession:
    session = RealtimeSession(
        SessionOptions(dialect=dialect, model_name="moshi-test", policy=ResponsePolicy(end_silence_ms=160))
    )
    for event in session.start().events:
        strict(event, dialect)
    return session


def expected_event_id(text: str) -> str | None:
    """The event id every error must name: the client's, when the text is an event the server can read."""
    if json_depth_exceeds(text):
        return None
    event = loads(text)
    return event.get("event_id") if isinstance(event, dict) and isinstance(event.get("event_id"), str) else None


def event_type(text: str) -> Any:
    event = loads(text)
    return event.get("type") if isinstance(event, dict) else None


def loads(text: str) -> Any:
    """The JSON value of a text (numbers of any size kept as text, as no number stops an event
    from being read), or None."""
    try:
        return json.loads(text, parse_int=float, parse_constant=float)
    except (ValueError, RecursionError):
        return None


def check_receive(session: RealtimeSession, text: str, dialect: Dialect) -> None:
    effects = session.receive(text)
    event_id = expected_event_id(text)
    assert effects.client_event_id == event_id
    if not effects.events:
        assert event_type(text) in SILENT, text[:300]
    for event in effects.events:
        strict(event, dialect)
        if event["type"] != "error":
            continue
        error = event["error"]
        assert error["type"] == "invalid_request_error", (error, text[:300])
        assert isinstance(error["code"], str) and error["code"], error
        assert isinstance(error["message"], str) and error["message"], error
        if error["code"] in NAMED:
            assert isinstance(error["param"], str) and error["param"], error
        assert error["event_id"] == event_id, (error, text[:300])


def step_model(session: RealtimeSession, dialect: Dialect) -> None:
    """A few model ticks: speech, then text and audio out, then quiet, so responses open and close."""
    ticks = [
        ("Hi", LOUD, (0.9, 0.9, 0.9)),
        (None, LOUD, (0.0, 0.0, 0.0)),
        (" there", QUIET, (0.0, 0.0)),
        (None, QUIET, ()),
        (None, None, (0.0,) * 20),
    ]
    for text, pcm, speech in ticks:
        for event in session.model_output(text, pcm, speech).events:
            strict(event, dialect)


@DIALECTS
@FUZZ
@given(data=st.data())
def test_generated_events(dialect: Dialect, data: st.DataObject) -> None:
    session = new_session(dialect)
    check_receive(session, json.dumps(data.draw(EVENTS[dialect])), dialect)
    step_model(session, dialect)


@DIALECTS
@FUZZ
@given(data=st.data())
def test_mutated_events(dialect: Dialect, data: st.DataObject) -> None:
    session = new_session(dialect)
    check_receive(session, data.draw(mutated_events(dialect)), dialect)
    step_model(session, dialect)


@DIALECTS
@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_each_place_dropped_null_or_of_another_type(dialect: Dialect, data: st.DataObject) -> None:
    """Systematically, for up to twelve places of a generated event: without it, null, and other types."""
    event = data.draw(EVENTS[dialect])
    places = [path for path in paths(event) if path and path != ("type",)]
    for path in data.draw(st.permutations(places))[:12]:
        for action, replacement in [
            ("drop", None),
            ("replace", None),
            ("replace", 7),
            ("replace", "x"),
            ("replace", []),
            ("replace", {}),
        ]:
            session = new_session(dialect)
            check_receive(session, to_text(mutate(copy.deepcopy(event), path, action, replacement)), dialect)
            step_model(session, dialect)


@DIALECTS
@FUZZ
@given(data=st.data())
def test_text_that_is_not_an_event(dialect: Dialect, data: st.DataObject) -> None:
    session = new_session(dialect)
    check_receive(session, data.draw(RAW_TEXT | broken_json(dialect)), dialect)


@DIALECTS
@FUZZ
@given(data=st.data())
def test_sequences_of_events_on_one_session(dialect: Dialect, data: st.DataObject) -> None:
    """State built by earlier events (items, a response, a configuration) meets later ones."""
    session = new_session(dialect)
    texts = data.draw(
        st.lists(st.one_of(EVENTS[dialect].map(json.dumps), mutated_events(dialect), RAW_TEXT), min_size=2, max_size=6)
    )
    for text in texts:
        check_receive(session, text, dialect)
        step_model(session, dialect)
    for event in session.close().events:
        strict(event, dialect)
