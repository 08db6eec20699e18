"""Input transcription: turning the user's committed speech into text through an ASR service.

One small interface (TranscriptionBackend), backends chosen by a dotted path in settings
(VOICE["ASR_BACKEND"]), the instance cached and dropped on setting_changed so tests can swap it.
"""

from .backends import (
    NoTranscription,
    OpenAICompatibleBackend,
    TranscriptionBackend,
    TranscriptionError,
    TranscriptionResult,
    get_backend,
)

__all__ = [
    "NoTranscription",
    "OpenAICompatibleBackend",
    "TranscriptionBackend",
    "TranscriptionError",
    "TranscriptionResult",
    "get_backend",
]
