"""The session configuration: one canonical (GA-shaped) dict, validated updates, two renderings.

The session is stored in the GA shape (`audio.input` / `audio.output`) whatever the dialect; a beta
`session.update` is translated into that shape and the beta `session.*` events are rendered back
from it. Field types and enums are checked with the openai SDK's own pydantic request models, so
what we accept is exactly what OpenAI documents; ranges and top-level unknown keys are checked here.

Settings that Moshi cannot honour (voice, speed, tools, tracing, an OpenAI model name, ...) are
accepted, stored and reflected back, as voice-agent frameworks treat an `error` as fatal; the
README lists them.
"""

from __future__ import annotations

import copy
import time
import typing
from typing import Any

import pydantic
from openai.types.beta.realtime.session_update_event import Session as BetaSessionModel
from openai.types.realtime import RealtimeSessionCreateRequest
from pydantic_core import ErrorDetails

from .dialect import Dialect
from .errors import ProtocolError

SESSION_LIFETIME_S = 30 * 60

DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,  # OpenAI's documented default (its server has sent 200)
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}

PCM16 = {"type": "audio/pcm", "rate": 24000}

# The beta SDK types `session.model` as a closed list of OpenAI model names, so a beta session names
# the model the client asked for when it is one of those, else this one (the README says so); the
# served Moshi checkpoint is named in GA sessions, in the log and in the stored conversation.
BETA_MODEL_NAMES = set(typing.get_args(typing.get_args(BetaSessionModel.model_fields["model"].annotation)[0]))
BETA_FALLBACK_MODEL = "gpt-4o-realtime-preview"

_GA_TOP_LEVEL = set(RealtimeSessionCreateRequest.model_fields)
_BETA_TOP_LEVEL = set(BetaSessionModel.model_fields)
_GA_AUDIO = {"input", "output"}
_GA_AUDIO_INPUT = {"format", "noise_reduction", "transcription", "turn_detection"}
_GA_AUDIO_OUTPUT = {"format", "speed", "voice"}

_BETA_FORMATS = {"pcm16": PCM16, "g711_ulaw": {"type": "audio/pcmu"}, "g711_alaw": {"type": "audio/pcma"}}
_GA_TO_BETA_FORMAT = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
# Beta's turn_detection model has no idle_timeout_ms; everything else is shared.
_BETA_TURN_DETECTION_KEYS = {
    "type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
    "interrupt_response", "eagerness",
}


def default_session(*, session_id: str, model: str, instructions: str) -> dict[str, Any]:
    """The session as announced in `session.created`, with OpenAI's defaults."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": instructions,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "expires_at": int(time.time()) + SESSION_LIFETIME_S,
        "audio": {
            "input": {
                "format": dict(PCM16),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(DEFAULT_TURN_DETECTION),
            },
            "output": {"format": dict(PCM16), "voice": "alloy", "speed": 1.0},
        },
        # Beta-only setting, kept so that a beta client sees its own value back.
        "temperature": 0.8,
    }


def apply_update(current: dict[str, Any], update: Any, dialect: Dialect) -> dict[str, Any]:
    """Validate a `session.update` payload and return the merged session (``current`` is untouched).

    Raises ProtocolError with OpenAI's codes (`invalid_type`, `unknown_parameter`, `invalid_value`)
    and the dotted parameter path.
    """
    if not isinstance(update, dict):
        raise ProtocolError("invalid_type", "Invalid type for 'session': expected an object.", param="session")
    ga_update = _validate_ga(update) if dialect is Dialect.GA else _beta_to_ga(_validate_beta(update))
    merged = copy.deepcopy(current)
    _merge(merged, ga_update)
    _check_ranges(merged, dialect)
    return merged


def render(session: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    """The session object for a `session.created` / `session.updated` event in this dialect."""
    if dialect is Dialect.GA:
        return {k: copy.deepcopy(v) for k, v in session.items() if k != "temperature"}
    audio_in = session["audio"]["input"]
    audio_out = session["audio"]["output"]
    turn = audio_in["turn_detection"]
    return {
        "id": session["id"],
        "object": "realtime.session",
        "model": session["model"] if session["model"] in BETA_MODEL_NAMES else BETA_FALLBACK_MODEL,
        "expires_at": session["expires_at"],
        "modalities": ["audio", "text"] if "audio" in session["output_modalities"] else ["text"],
        "instructions": session["instructions"],
        "voice": audio_out["voice"] if isinstance(audio_out["voice"], str) else audio_out["voice"].get("id"),
        "input_audio_format": _GA_TO_BETA_FORMAT[audio_in["format"]["type"]],
        "output_audio_format": _GA_TO_BETA_FORMAT[audio_out["format"]["type"]],
        "input_audio_transcription": _beta_transcription(audio_in["transcription"]),
        "input_audio_noise_reduction": copy.deepcopy(audio_in["noise_reduction"]),
        "turn_detection": None if turn is None else {k: v for k, v in turn.items() if k in _BETA_TURN_DETECTION_KEYS},
        "tools": copy.deepcopy(session["tools"]),
        "tool_choice": copy.deepcopy(session["tool_choice"]),
        "temperature": session["temperature"],
        "max_response_output_tokens": session["max_output_tokens"],
        "speed": audio_out["speed"],
        "tracing": copy.deepcopy(session["tracing"]),
        "client_secret": None,
    }


def turn_detection(session: dict[str, Any]) -> dict[str, Any] | None:
    return session["audio"]["input"]["turn_detection"]


def output_audio(session: dict[str, Any]) -> bool:
    """Whether responses carry audio (GA `["audio"]`, beta `["audio","text"]`) or text only."""
    return "audio" in session["output_modalities"]


# --- validation -------------------------------------------------------------------------------


def _validate_ga(update: dict[str, Any]) -> dict[str, Any]:
    update = dict(update)
    kind = update.setdefault("type", "realtime")
    if kind == "transcription":
        raise ProtocolError(
            "invalid_value",
            "Passing a transcription session update event to a realtime session is not allowed.",
            param="session.type",
        )
    _reject_unknown(update, _GA_TOP_LEVEL, "session")
    audio = update.get("audio")
    if isinstance(audio, dict):
        _reject_unknown(audio, _GA_AUDIO, "session.audio")
        if isinstance(audio.get("input"), dict):
            _reject_unknown(audio["input"], _GA_AUDIO_INPUT, "session.audio.input")
        if isinstance(audio.get("output"), dict):
            _reject_unknown(audio["output"], _GA_AUDIO_OUTPUT, "session.audio.output")
    _model_validate(RealtimeSessionCreateRequest, update)
    return update


def _validate_beta(update: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(update, _BETA_TOP_LEVEL, "session")
    _model_validate(BetaSessionModel, update)
    return update


def _reject_unknown(obj: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ProtocolError("unknown_parameter", f"Unknown parameter: '{path}.{key}'.", param=f"{path}.{key}")


def _model_validate(model: type[pydantic.BaseModel], data: dict[str, Any]) -> None:
    try:
        model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = _relevant_error(exc.errors())
        param = "session" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in _input_path(data, first["loc"]))
        raise ProtocolError(
            "invalid_value" if first["type"] != "missing" else "missing_required_parameter",
            f"Invalid value for '{param}': {first['msg']}.",
            param=param,
        ) from None


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
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            path.append(step)
            node = node[step]
    return path


# Where the range-checked settings live in a beta session, so that a beta client's `error` names the
# parameter it sent rather than its place in the stored GA shape.
_BETA_PARAMS = {
    "session.audio.input.turn_detection.threshold": "session.turn_detection.threshold",
    "session.audio.output.speed": "session.speed",
    "session.max_output_tokens": "session.max_response_output_tokens",
    "session.output_modalities": "session.modalities",
    "session.audio.input.format": "session.input_audio_format",
    "session.audio.output.format": "session.output_audio_format",
}


def _check_ranges(session: dict[str, Any], dialect: Dialect) -> None:
    """Ranges that the SDK's models do not encode but OpenAI enforces."""

    def name(ga_param: str) -> str:
        return _BETA_PARAMS[ga_param] if dialect is Dialect.BETA else ga_param

    turn = session["audio"]["input"]["turn_detection"]
    if turn and turn.get("type") == "server_vad" and turn.get("threshold") is not None:
        if not 0.0 <= float(turn["threshold"]) <= 1.0:
            param = name("session.audio.input.turn_detection.threshold")
            raise ProtocolError(
                "invalid_value", f"Invalid value for '{param}': expected a number between 0 and 1.", param=param
            )
    speed = session["audio"]["output"]["speed"]
    if speed is not None and not 0.25 <= float(speed) <= 1.5:
        param = name("session.audio.output.speed")
        raise ProtocolError(
            "invalid_value", f"Invalid value for '{param}': expected a number between 0.25 and 1.5.", param=param
        )
    tokens = session["max_output_tokens"]
    if tokens != "inf" and not (isinstance(tokens, int) and 1 <= tokens <= 4096):
        param = name("session.max_output_tokens")
        raise ProtocolError(
            "invalid_value", f"Invalid value for '{param}': expected an integer from 1 to 4096 or 'inf'.", param=param
        )
    modalities = session["output_modalities"]
    if not modalities or len(set(modalities)) != len(modalities) or len(modalities) > 1 and "text" in modalities:
        param = name("session.output_modalities")
        raise ProtocolError("invalid_value", f"Invalid value for '{param}': expected ['audio'] or ['text'].", param=param)
    for direction in ("input", "output"):
        if session["audio"][direction]["format"].get("type") != "audio/pcm":
            raise ProtocolError(
                "unsupported_audio_format",
                f"Only 24 kHz pcm16 audio ('audio/pcm') is supported for {direction} audio by this server.",
                param=name(f"session.audio.{direction}.format"),
            )


# --- merging and translation ------------------------------------------------------------------

# Containers whose fields update one by one; every other value replaces the stored one whole.
_MERGED_CONTAINERS = {("audio",), ("audio", "input"), ("audio", "output")}


def _merge(target: dict[str, Any], update: dict[str, Any], path: tuple[str, ...] = ()) -> None:
    for key, value in update.items():
        here = (*path, key)
        if here in _MERGED_CONTAINERS and isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, here)
        elif here == ("audio", "input", "turn_detection") and isinstance(value, dict):
            target[key] = _complete_turn_detection(target.get(key), value)
        else:
            target[key] = copy.deepcopy(value)


def _complete_turn_detection(current: dict[str, Any] | None, value: dict[str, Any]) -> dict[str, Any]:
    """Fill in OpenAI's defaults so `session.updated` shows every effective setting."""
    kind = value.get("type", (current or {}).get("type", "server_vad"))
    if kind == "semantic_vad":
        base: dict[str, Any] = {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    else:
        base = dict(DEFAULT_TURN_DETECTION)
    if current and current.get("type") == kind:
        base.update(current)
    base.update(value)
    return base


def _beta_to_ga(update: dict[str, Any]) -> dict[str, Any]:
    ga: dict[str, Any] = {}
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for key, value in update.items():
        if key == "modalities":
            ga["output_modalities"] = ["audio"] if "audio" in value else ["text"]
        elif key == "voice":
            audio_out["voice"] = value
        elif key == "speed":
            audio_out["speed"] = value
        elif key == "input_audio_format":
            audio_in["format"] = dict(_BETA_FORMATS[value])
        elif key == "output_audio_format":
            audio_out["format"] = dict(_BETA_FORMATS[value])
        elif key == "input_audio_transcription":
            audio_in["transcription"] = value
        elif key == "input_audio_noise_reduction":
            audio_in["noise_reduction"] = value
        elif key == "turn_detection":
            audio_in["turn_detection"] = value
        elif key == "max_response_output_tokens":
            ga["max_output_tokens"] = value
        elif key == "client_secret":
            continue
        else:  # instructions, tools, tool_choice, temperature, tracing, model: same name and shape
            ga[key] = value
    if audio_in or audio_out:
        ga["audio"] = {}
        if audio_in:
            ga["audio"]["input"] = audio_in
        if audio_out:
            ga["audio"]["output"] = audio_out
    return ga


def _beta_transcription(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {k: value.get(k) for k in ("model", "language", "prompt") if k in value}
