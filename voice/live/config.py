"""The Live session resource: options, `session.start` resolved into it, `session.update` applied to it.

What a client configures is checked here against what Moshi can do, after the event has been
validated by type (client_events.py): model names select a model type (sft, base or pretrain) the
runtime loads; audio formats, voices and delegation are accepted or refused with the parameter
named. Decisions, triggers, stored sessions, WebRTC client permissions and hosted tools are
refused precisely rather than ignored, since a client relying on them would otherwise wait forever.
"""

from __future__ import annotations

import copy
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openai.types.live.built_in_voice import BuiltInVoice
from openai.types.live.session_config import SessionConfig
from openai.types.live.session_update_config import SessionUpdateConfig

from voice.protocol.errors import ProtocolError
from voice.protocol.responses import ResponsePolicy

from .audio import SUPPORTED_RATES, AudioFormat

# OpenAI's Live model names, served by Moshi's instruction-following (SFT) checkpoint.
LIVE_MODELS: Mapping[str, str] = {"gpt-live-1": "sft", "gpt-live-1.1": "sft"}
BUILT_IN_VOICES = frozenset(typing.get_args(BuiltInVoice))
DEFAULT_VOICE = "marin"
MAX_INPUT_ITEMS = 128
IMMUTABLE = frozenset(SessionConfig.model_fields) - frozenset(SessionUpdateConfig.model_fields)


@dataclass(frozen=True)
class LiveOptions:
    """How this server runs Live sessions (the runtime fills it from its settings)."""

    server_models: Mapping[str, str] = field(default_factory=dict)  # this server's own names -> model type
    instructions: str = "You are Moshi, a friendly voice assistant."
    voices: frozenset[str] = BUILT_IN_VOICES
    max_duration_s: int = 3600  # sets expires_at; the session closes with reason `expired` after it
    context_frames: int = 3000  # Moshi's context (240 s): usage_ratio = frames used / this
    usage_interval_ms: int = 4000  # how often session.usage.updated is sent, on the session clock
    # Output transcript fragments are placed this many 80 ms frames after the frame whose step
    # produced the token. The engine already undoes Moshi's acoustic delay (its LMGen returns a
    # text token with the audio of the same position), so 0 is exact for it.
    text_offset_frames: int = 0
    policy: ResponsePolicy = field(default_factory=ResponsePolicy)  # the output activity rule
    transcription_model: str | None = None  # the ASR model; None: no input transcripts
    transcription_language: str | None = None
    vad_threshold: float = 0.5
    segment_silence_ms: int = 500  # silence that ends a user segment
    max_segment_ms: int = 30000  # a longer segment is cut and transcribed in parts
    # Longest an output fragment waits for a user segment's transcript (it goes sooner when the
    # model stops speaking). Under pipecat's 0.8 s turn gap, so a hold never splits a reply in
    # two; a fast ASR service answers within it when the model waits for the user to finish.
    max_transcript_hold_ms: int = 500
    max_instructions_chars: int = 65536  # about 16,384 tokens
    max_append_tokens: int = 500
    wall: Callable[[], float] = time.time  # expires_at's clock
    # A companion model is configured (COMPANION_*): client and Responses delegation are emulated
    # with it (delegation.py). Without one, delegation is accepted and echoed but never starts.
    companion: bool = False
    # `session.commentary.append` is said by Moshi word for word (Effects.speak, forced into its
    # inner monologue by the engine); False: acknowledged and stored only.
    speak_commentary: bool = True

    def model_type(self, model: str) -> str | None:
        return self.server_models.get(model) or LIVE_MODELS.get(model)


def refuse(code: str, message: str, param: str | None) -> ProtocolError:
    return ProtocolError(code, message, param=param)


def _check_delegation(delegation: Any, prefix: str) -> None:
    if not isinstance(delegation, dict):
        return
    if delegation.get("type") == "decisions":
        raise refuse(
            "unsupported_delegation",
            "Decisions delegation is not supported by this server (no Decisions API); use 'client' or 'responses'.",
            f"{prefix}.type",
        )
    responses = delegation.get("responses")
    if not isinstance(responses, dict):
        return
    tools = responses.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, dict) and tool.get("type") != "function":
            raise refuse(
                "unsupported_server_tool",
                f"Tool type '{tool.get('type')}' runs on OpenAI's servers and is not available here; "
                "only function tools are supported.",
                f"{prefix}.responses.tools[{index}].type",
            )
    choice = responses.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "allowed_tools":
            allowed = choice.get("tools")
            for index, tool in enumerate(allowed if isinstance(allowed, list) else []):
                if isinstance(tool, dict) and tool.get("type") != "function":
                    raise refuse(
                        "unsupported_server_tool",
                        f"Tool type '{tool.get('type')}' runs on OpenAI's servers and is not available here; "
                        "only function tools can be allowed.",
                        f"{prefix}.responses.tool_choice.tools[{index}].type",
                    )
        elif kind != "function":
            raise refuse(
                "unsupported_server_tool",
                f"tool_choice type '{kind}' names a tool that runs on OpenAI's servers; "
                "only 'auto', 'none', 'required', a function or allowed function tools are supported.",
                f"{prefix}.responses.tool_choice.type",
            )


def check_hosted_tools(event: dict[str, Any]) -> None:
    """Before the event is validated by type: a hosted tool (or tool_choice) is refused as such,
    even when it carries settings the Live schema does not declare (`vector_store_ids`, ...),
    which would otherwise be reported as an unknown parameter of a tool nobody can use here."""
    session = event.get("session")
    if isinstance(session, dict) and isinstance(session.get("delegation"), dict):
        _check_delegation(session["delegation"], "session.delegation")


def _check_tool_choice(delegation: dict[str, Any], prefix: str) -> None:
    """A function named by tool_choice must be one of the tools (checked on the merged settings)."""
    responses = delegation.get("responses") or {}
    choice = responses.get("tool_choice")
    names = {t.get("name") for t in responses.get("tools") or [] if isinstance(t, dict)}
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") not in names:
        raise refuse(
            "invalid_value",
            f"tool_choice names the function '{str(choice.get('name'))[:64]}', which is not in "
            f"'{prefix}.responses.tools'.",
            f"{prefix}.responses.tool_choice.name",
        )


def _check_triggers(triggers: Any, param: str) -> None:
    if triggers:
        raise refuse("unsupported_triggers", "Decision triggers are not supported by this server.", param)


def resolve_start(config: dict[str, Any], options: LiveOptions, session_id: str) -> tuple[dict[str, Any], AudioFormat]:
    """The resource of `session.started` for a validated `session.start` config, and its audio format."""
    model = config["model"]
    if options.model_type(model) is None:
        names = sorted({*LIVE_MODELS, *options.server_models})
        raise refuse(
            "invalid_model",
            f"The model '{model[:64]}' does not exist here. Available: {', '.join(names)}.",
            "session.model",
        )
    if config.get("store"):
        raise refuse(
            "unsupported_parameter", "Stored sessions (forks, recording download) are not supported.", "session.store"
        )
    if config.get("client") is not None:
        raise refuse(
            "unsupported_parameter",
            "'client' configures WebRTC data channels, which this server does not offer.",
            "session.client",
        )
    _check_triggers(config.get("triggers"), "session.triggers")
    _check_delegation(config.get("delegation"), "session.delegation")
    if isinstance(config.get("delegation"), dict):
        _check_tool_choice(config["delegation"], "session.delegation")
    audio = config.get("audio") or {}
    fmt = AudioFormat(**audio["format"]) if audio.get("format") else AudioFormat()
    if fmt.rate not in SUPPORTED_RATES[fmt.type]:
        raise refuse(
            "invalid_value",
            f"Invalid value for 'session.audio.format.rate': {fmt.type} uses {SUPPORTED_RATES[fmt.type][0]} Hz.",
            "session.audio.format.rate",
        )
    voice = (audio.get("output") or {}).get("voice") or DEFAULT_VOICE
    if not isinstance(voice, str) or voice not in options.voices:
        raise refuse(
            "invalid_value",
            "Invalid value for 'session.audio.output.voice': custom voices are not available; "
            f"use one of {', '.join(sorted(options.voices))}.",
            "session.audio.output.voice",
        )
    instructions = config.get("instructions")
    if instructions is not None and len(instructions) > options.max_instructions_chars:
        raise refuse(
            "string_above_max_length",
            f"'session.instructions' is over {options.max_instructions_chars} characters.",
            "session.instructions",
        )
    if len(config.get("input") or []) > MAX_INPUT_ITEMS:
        raise refuse("invalid_value", f"'session.input' holds more than {MAX_INPUT_ITEMS} messages.", "session.input")
    resource: dict[str, Any] = {
        "id": session_id,
        "expires_at": int(options.wall()) + options.max_duration_s,
        "model": model,
        "status": "active",
        "audio": {"format": fmt.as_json(), "output": {"voice": voice}},
        "delegation": copy.deepcopy(config.get("delegation")) or {"type": "client"},
        "instructions": instructions if instructions and instructions.strip() else options.instructions,
        "store": False,
    }
    for key in ("input", "safety_identifier"):
        if config.get(key) is not None:
            resource[key] = copy.deepcopy(config[key])
    return resource, fmt


def check_immutable(update: Any) -> None:
    """Settings of `session.start` that `session.update` may not touch: an error naming the first."""
    if isinstance(update, dict):
        for key in update:
            if key in IMMUTABLE:
                raise refuse(
                    "immutable_parameter",
                    f"'session.{key}' cannot change after session.start; only delegation and triggers can be updated.",
                    f"session.{key}",
                )


def apply_update(resource: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The resource after a validated `session.update`: delegation settings merged sparsely."""
    result = copy.deepcopy(resource)
    _check_triggers(update.get("triggers"), "session.triggers")
    if "delegation" not in update:
        return result
    delegation = update["delegation"] or {"type": "client"}
    current = result["delegation"]
    if delegation.get("type") != current.get("type"):
        raise refuse(
            "invalid_value",
            f"The delegation type cannot change after session.start (it is '{current.get('type')}').",
            "session.delegation.type",
        )
    _check_delegation(delegation, "session.delegation")
    if "acknowledgement_delay_ms" in delegation:
        current["acknowledgement_delay_ms"] = delegation["acknowledgement_delay_ms"]
    if delegation.get("responses"):
        current["responses"].update(copy.deepcopy(delegation["responses"]))
        _check_tool_choice(current, "session.delegation")
    return result
