"""The OpenAI Realtime protocol as plain Python: no Django, no torch, no WebSocket.

RealtimeSession takes client events (JSON text) and model output frames and returns server events,
audio frames for the model and persistence records, so it can be tested without a server.
"""

from .dialect import Dialect
from .effects import Effects
from .limits import SessionLimits
from .session import RealtimeSession, SessionOptions

__all__ = ["Dialect", "Effects", "RealtimeSession", "SessionLimits", "SessionOptions"]
