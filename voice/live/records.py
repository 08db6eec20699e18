"""What a Live session asks to be stored, as plain values (the runtime hands them to persistence).

A Live session has no items of its own: it is a timeline of transcript fragments from both
speakers, text appends, and finally its usage and why it closed. The runtime joins fragments into
turns when it stores the conversation; the protocol layer only says what happened and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Speaker = Literal["user", "assistant"]
AppendKind = Literal["instructions", "thinking", "commentary"]
CloseReason = Literal["close_requested", "expired", "content", "remote_hangup", "connection_lost"]


@dataclass(frozen=True)
class LiveStarted:
    """The resolved session (the `session` of `session.started`) and the model type it selects."""

    session: dict[str, Any]
    model_type: str


@dataclass(frozen=True)
class Fragment:
    """One transcript fragment sent to the client, on the session clock (ms since session.start)."""

    speaker: Speaker
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Appended:
    """An accepted `session.{instructions,thinking,commentary}.append`."""

    kind: AppendKind
    content: str
    delegation_id: str | None
    at_ms: int


@dataclass(frozen=True)
class LiveClosed:
    """The end of the session: why, its usage and the final resource."""

    reason: CloseReason
    seconds: int
    frames: int
    session: dict[str, Any]


LiveRecord = LiveStarted | Fragment | Appended | LiveClosed
