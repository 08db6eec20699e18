"""OpenAI's Live API (`gpt-live-1`, /v1/live/sessions) as plain Python: no Django, no torch, no I/O.

LiveSession takes client events (JSON text), Moshi's 80 ms frames and ASR results, and returns
voice.protocol Effects (server events, model input frames, ASR requests, records), so the Live
front end shares the Realtime one's connection runtime and is tested without a server.
See docs/live-api.md.
"""

from voice.engine import MODEL_TYPES  # named once, for the engine and both protocols

from .config import LIVE_MODELS, LiveOptions
from .session import LiveSession

__all__ = ["LIVE_MODELS", "MODEL_TYPES", "LiveOptions", "LiveSession"]
