"""What the session asks to be stored. Plain values; the consumer hands them to transcripts.services.

Keeping these as data (not ORM calls) keeps the protocol free of Django and lets one writer task
store them in batches, off the audio path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .companion import CompanionOutcome


@dataclass(frozen=True)
class ConfigAccepted:
    session: dict[str, Any]


@dataclass(frozen=True)
class ItemStored:
    """An item as it stands now (created or final); stored by its item id, so later versions replace it."""

    item_id: str
    item_type: str
    role: str
    status: str
    text: str
    position: int
    response_id: str | None = None
    audio_ms: int = 0
    content: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ItemDeleted:
    item_id: str


@dataclass(frozen=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int
    heard_text: str


@dataclass(frozen=True)
class TranscriptionOutcome:
    """What the ASR service made of a committed user turn: text, or an error code and message.

    The transcriber hands it to the session (which tells the client) and it is stored as is.
    """

    item_id: str
    text: str
    model: str
    language: str | None
    latency_ms: int
    audio_seconds: float
    error: str | None = None
    error_code: str | None = None


Record = ConfigAccepted | ItemStored | ItemDeleted | ItemTruncated | TranscriptionOutcome | CompanionOutcome
