"""The session configuration: one canonical (GA-shaped) dict, validated updates, two renderings.

The session is stored in the GA shape (`audio.input` / `audio.output`) whatever the dialect; a beta
`session.update` is translated into that shape and the beta `session.*` events are rendered back
from it. Field types and enums are checked with the openai SDK's own pydantic request models, so
what we accept is exactly what OpenAI documents (validation.py: strictly typed, null only where
allowed, no unknown keys); ranges are checked here.

Settings that Moshi cannot honour (voice, speed, tools, tracing, an OpenAI model name, ...) are
accepted, stored and reflected back, as voice-agent frameworks treat an `error` as fatal; the
README lists them.
"""

from __future__ import annotations

import copy
import time
import typing
from typing import Any

from openai.types.beta.realtime.session_update_event import Session as BetaSessionModel
from openai.types.realtime import RealtimeSessionCreateRequest

from . import validation
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

_BETA_FORMATS = {"pcm16": PCM16, "g711_ulaw": {"type": "audio/pcmu"}, "g711_alaw": {"type": "audio/pcma"}}
_GA_TO_BETA_FORMAT = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
# Beta's turn_detection model has no idle_timeout_ms; everything else is shared.
_BETA_TURN_DETECTION_KEYS = {
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "create_response",
    "interrupt_response",
    "eagerness",
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
    validation.check_model(RealtimeSessionCreateRequest, update, Dialect.GA, prefix=("session",))
    return update


def _validate_beta(update: dict[str, Any]) -> dict[str, Any]:
    validation.check_model(BetaSessionModel, update, Dialect.BETA, prefix=("session",))
    return update


# Where the range-checked settings live in a beta session, so that a beta client's `error` names the
# parameter it sent rather than its place in the stored GA shape.
_BETA_PARAMS = {
    "session.audio.output.speed": "session.speed",
    "session.max_output_tokens": "session.max_response_output_tokens",
    "session.output_modalities": "session.modalities",
    "session.audio.input.format": "session.input_audio_format",
    "session.audio.output.format": "session.output_audio_format",
}
_BETA_PREFIXES = {
    "session.audio.input.turn_detection.": "session.turn_detection.",
    "session.audio.input.transcription.": "session.input_audio_transcription.",
}
# Strings stored in columns of bounded size with each transcription (transcripts.models).
_TRANSCRIPTION_LIMITS = {"language": 16, "model": 128}


def _check_ranges(session: dict[str, Any], dialect: Dialect) -> None:
    """Ranges that the SDK's models do not encode but OpenAI enforces (or storage needs)."""

    def name(ga_param: str) -> str:
        if dialect is Dialect.GA:
            return ga_param
        for ga_prefix, beta_prefix in _BETA_PREFIXES.items():
            if ga_param.startswith(ga_prefix):
                return beta_prefix + ga_param[len(ga_prefix) :]
        return _BETA_PARAMS[ga_param]

    turn = session["audio"]["input"]["turn_detection"]
    if turn and turn.get("type") == "server_vad" and turn.get("threshold") is not None:
        if not 0.0 <= float(turn["threshold"]) <= 1.0:
            param = name("session.audio.input.turn_detection.threshold")
            raise ProtocolError(
                "invalid_value", f"Invalid value for '{param}': expected a number between 0 and 1.", param=param
            )
    for key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
        value = (turn or {}).get(key)
        if value is not None and value < 0:
            param = name(f"session.audio.input.turn_detection.{key}")
            raise ProtocolError(
                "invalid_value", f"Invalid value for '{param}': expected a non-negative integer.", param=param
            )
    transcription = session["audio"]["input"]["transcription"]
    for key, limit in _TRANSCRIPTION_LIMITS.items():
        value = (transcription or {}).get(key)
        if isinstance(value, str) and len(value) > limit:
            param = name(f"session.audio.input.transcription.{key}")
            raise ProtocolError(
                "string_above_max_length",
                f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, "
                f"but got a string with length {len(value)} instead.",
                param=param,
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
        raise ProtocolError(
            "invalid_value", f"Invalid value for '{param}': expected ['audio'] or ['text'].", param=param
        )
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
        base: dict[str, Any] = {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
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
