"""The companion model: an OpenAI-compatible chat-completions model that decides what Moshi says.

One small interface (CompanionBackend), the backend chosen by a dotted path in settings
(VOICE["COMPANION_BACKEND"]), the instance cached and dropped on setting_changed so tests can swap
it, as for the ASR service (voice.asr). SessionCompanion runs a session's requests (the contract:
voice/protocol/companion.py) one at a time, bounded, and hands every outcome back.
"""

from .backends import (
    CompanionBackend,
    CompanionError,
    CompanionReply,
    NoCompanion,
    OpenAICompatibleCompanion,
    get_companion,
)
from .runner import ERROR_CODES, SessionCompanion

__all__ = [
    "ERROR_CODES",
    "CompanionBackend",
    "CompanionError",
    "CompanionReply",
    "NoCompanion",
    "OpenAICompatibleCompanion",
    "SessionCompanion",
    "get_companion",
]
