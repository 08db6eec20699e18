"""The two dialects of the Realtime protocol, mapped in one place.

Beta ("realtime=v1") and GA share most event names; the differences are the output event names,
how items enter the conversation, and the content part types inside items.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Dialect(enum.Enum):
    BETA = "beta"
    GA = "ga"

    @classmethod
    def from_handshake(cls, headers: Mapping[str, str], subprotocols: list[str]) -> Dialect:
        """Beta when the client says `OpenAI-Beta: realtime=v1` or offers the beta subprotocol."""
        if "realtime=v1" in headers.get("openai-beta", ""):
            return cls.BETA
        if "openai-beta.realtime-v1" in subprotocols:
            return cls.BETA
        return cls.GA


# GA name -> beta name for the response output events that were renamed at GA.
_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


def event_name(dialect: Dialect, ga_name: str) -> str:
    """The wire name of a server event in this dialect (events are written with GA names)."""
    if dialect is Dialect.BETA:
        return _BETA_NAMES.get(ga_name, ga_name)
    return ga_name


def assistant_part_type(dialect: Dialect, kind: str) -> str:
    """Content part type inside an assistant item: GA `output_audio`/`output_text`, beta `audio`/`text`."""
    return f"output_{kind}" if dialect is Dialect.GA else kind
