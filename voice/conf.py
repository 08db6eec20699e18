"""The voice app's settings: one VOICE dict in Django settings, merged over these defaults.

Cached, and dropped on Django's setting_changed signal so that override_settings works in tests.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    "SFT_MODEL": "",  # Hub repo id or local folder of the SFT (instruct) model; "" = the demo checkpoint
    "BASE_MODEL": "",  # optional, selectable per session with ?model_type=base
    "PRETRAIN_MODEL": "",  # optional, ?model_type=pretrain
    "DEVICE": "auto",  # auto = cuda when available, else cpu
    "LOAD_MODEL": "auto",  # auto = when the process serves (daphne, runserver); 1 = always; 0 = never
    "DEMO_CHECKPOINT_DIR": "var/demo-checkpoint",
    "MAX_SESSIONS": 8,  # slots per model: concurrent sessions in one batched state
    "TICK_MS": 80.0,  # one batched step per tick; 0 = step as soon as a frame is ready (tests)
    "INPUT_QUEUE_FRAMES": 64,  # per-session input bound, in 80 ms frames
    "IDLE_TIMEOUT_S": 600.0,  # a session with no client event for this long ends; 0 = never
    "MAX_MESSAGE_BYTES": 15 * 1024 * 1024,  # largest client event accepted (OpenAI's limit)
    "TORCH_COMPILE": "auto",  # auto = on cuda only (compiling on the CPU costs more than it saves)
    "RESPONSE_ACTIVITY_RMS": 0.02,
    "RESPONSE_END_SILENCE_MS": 800,
    "RESPONSE_MAX_MS": 30000,
    "ASR_BACKEND": "voice.asr.backends.openai_compatible_from_settings",  # dotted path to a backend factory
    "ASR_BASE_URL": "",  # an OpenAI-compatible transcription API; with ASR_API_KEY also empty, transcription is off
    "ASR_API_KEY": "",
    "ASR_MODEL": "",  # when set, the model the ASR service is asked for, whatever the session names
    "ASR_TIMEOUT_S": 30.0,
    "ASR_RETRIES": 2,  # further attempts after a timeout, a 5xx or a 429, with exponential backoff
    "ASR_MAX_PENDING": 4,  # segments per session waiting for the ASR service; more fail at once
    "OPEN_ENDPOINT": "auto",  # anyone may connect without an API key; auto = only when DEBUG
    "ALLOWED_ORIGINS": [],  # browser origins allowed besides ALLOWED_HOSTS, e.g. "https://app.example.com"
    "RECORD_AUDIO": False,  # keep each session's input and output audio as WAVs (storage API)
    "SEED": 0,
    "ENGINE": "batched",  # "serial" = the seed's design (one session stepped at a time), for benchmarks
    # Per-session budgets: what one client may make the server hold or store (see the README).
    "MAX_INSTRUCTIONS_BYTES": 32 * 1024,  # session instructions (and a response's), UTF-8 bytes
    "MAX_TOOLS_BYTES": 64 * 1024,  # the tools list of a session or a response, as JSON
    "MAX_ITEM_TEXT_BYTES": 32 * 1024,  # the text of one conversation item a client creates
    "MAX_METADATA_BYTES": 8 * 1024,  # a response's metadata, as JSON
    "MAX_ITEMS": 1000,  # items one conversation may hold
    "MAX_CONVERSATION_BYTES": 2 * 1024 * 1024,  # all client-created items of one conversation together
    "MAX_EVENTS_PER_SECOND": 200,  # client events per second, averaged over a burst of twice that
    "MAX_STORED_CONFIGS": 100,  # session configurations stored per session (changed ones only)
    "MAX_UNSENT_BYTES": 8 * 1024 * 1024,  # output queued for a client that does not read; past it, the session ends
    "MAX_SESSIONS_PER_KEY": 0,  # concurrent sessions one API key may hold in this process; 0 = no cap
    "SHUTDOWN_GRACE_S": 10.0,  # on SIGTERM, how long live sessions get to be told, stored and closed
    "CONSOLE_ALLOWED_ORIGINS": [],  # origins the staff console accepts; empty = the server's own origin only
    "METRICS_TOKEN": "",  # bearer token /metrics requires; empty = /metrics answers 403 unless DEBUG
}


@cache
def get_config() -> dict[str, Any]:
    return {**DEFAULTS, **getattr(settings, "VOICE", {})}


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "VOICE":
        get_config.cache_clear()


def demo_dir() -> Path:
    path = Path(get_config()["DEMO_CHECKPOINT_DIR"])
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path
