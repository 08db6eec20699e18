"""Per-session budgets: how much one client may make the server hold, store, or handle per second.

Each budget is a setting (VOICE["MAX_..."], from the environment variable REALTIME_MAX_...); what
goes beyond it gets an `error` event naming the budget and its variable, and is neither stored
nor kept. The checks are plain functions over already type-checked values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ProtocolError


@dataclass(frozen=True)
class SessionLimits:
    """The budgets of one session (defaults as in voice.conf.DEFAULTS)."""

    max_instructions_bytes: int = 32 * 1024  # instructions of session.update or response.create, UTF-8
    max_tools_bytes: int = 64 * 1024  # a tools list (session or response), as JSON
    max_item_text_bytes: int = 32 * 1024  # text/transcript/output/arguments of one created item
    max_metadata_bytes: int = 8 * 1024  # a response's metadata, as JSON
    max_items: int = 1000  # items one conversation holds
    max_conversation_bytes: int = 2 * 1024 * 1024  # the client-created items of a conversation, as JSON
    max_events_per_second: int = 200  # client events, in bursts of up to twice that; 0 = no limit
    max_stored_configs: int = 100  # session configurations stored (changed ones only)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SessionLimits:
        """From the voice settings (upper-case keys such as MAX_ITEMS); missing keys keep the defaults."""
        values = {f.name: int(config[f.name.upper()]) for f in fields(cls) if f.name.upper() in config}
        return cls(**values)


def setting(name: str) -> str:
    """The environment variable of a budget: ``max_items`` -> ``REALTIME_MAX_ITEMS``."""
    return "REALTIME_" + name.upper()


def json_bytes(value: Any) -> int:
    """The size of a value as compact UTF-8 JSON (how budgets measure structured settings)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def text_bytes(value: str) -> int:
    return len(value.encode("utf-8"))


def _too_large(code: str, what: str, size: int, limit: int, budget: str, param: str | None) -> ProtocolError:
    return ProtocolError(
        code,
        f"{what} is {size} bytes, over this server's limit of {limit} bytes ({setting(budget)}).",
        param=param,
    )


def check_instructions(value: Any, limits: SessionLimits, param: str) -> None:
    if isinstance(value, str) and (size := text_bytes(value)) > limits.max_instructions_bytes:
        raise _too_large(
            "instructions_too_large", f"'{param}'", size, limits.max_instructions_bytes, "max_instructions_bytes", param
        )


def check_tools(value: Any, limits: SessionLimits, param: str) -> None:
    if value is not None and (size := json_bytes(value)) > limits.max_tools_bytes:
        raise _too_large(
            "tools_too_large", f"'{param}' as JSON", size, limits.max_tools_bytes, "max_tools_bytes", param
        )


def check_metadata(value: Any, limits: SessionLimits, param: str) -> None:
    if value is not None and (size := json_bytes(value)) > limits.max_metadata_bytes:
        raise _too_large(
            "metadata_too_large", f"'{param}' as JSON", size, limits.max_metadata_bytes, "max_metadata_bytes", param
        )


# The session's settings other than instructions and tools (model, voice, prompt, tracing,
# transcription, ...) are stored with every configuration too, so they are bounded as well; not a
# setting, as real ones take well under a kilobyte.
MAX_OTHER_SETTINGS_BYTES = 32 * 1024


def check_session_rest(session: Mapping[str, Any]) -> None:
    rest = {k: v for k, v in session.items() if k not in ("instructions", "tools")}
    if (size := json_bytes(rest)) > MAX_OTHER_SETTINGS_BYTES:
        raise ProtocolError(
            "session_too_large",
            f"The session's settings other than instructions and tools are {size} bytes as JSON, over this "
            f"server's limit of {MAX_OTHER_SETTINGS_BYTES} bytes.",
            param="session",
        )


_TEXT_KEYS = ("text", "transcript", "output", "arguments")


def item_text_bytes(item: Any) -> int:
    """The text an item carries: every text/transcript/output/arguments string in it, together."""
    if isinstance(item, dict):
        total = 0
        for key, value in item.items():
            if key in _TEXT_KEYS and isinstance(value, str):
                total += text_bytes(value)
            else:
                total += item_text_bytes(value)
        return total
    if isinstance(item, list):
        return sum(item_text_bytes(value) for value in item)
    return 0


def check_item_text(item: Mapping[str, Any], limits: SessionLimits) -> None:
    if (size := item_text_bytes(item)) > limits.max_item_text_bytes:
        raise _too_large(
            "item_too_large", "The item's text", size, limits.max_item_text_bytes, "max_item_text_bytes", "item"
        )


class TokenBucket:
    """Events allowed per second on average, in bursts up to ``capacity``; ``rate`` <= 0: no limit."""

    def __init__(self, rate: float, capacity: float, now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity
        self._now = now
        self._tokens = capacity
        self._last = now()

    def take(self) -> bool:
        """Spend one token if there is one; False when the event is over the rate."""
        if self.rate <= 0:
            return True
        now = self._now()
        self._tokens = min(self.capacity, self._tokens + max(now - self._last, 0.0) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def rate_limited(limits: SessionLimits) -> ProtocolError:
    return ProtocolError(
        "rate_limit_exceeded",
        f"Too many events: this server handles at most {limits.max_events_per_second} events per second per "
        f"session, in bursts of up to {2 * limits.max_events_per_second} ({setting('max_events_per_second')}). "
        "This event was not handled.",
    )
