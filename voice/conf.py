"""The voice app's settings: VOICE from Django settings over defaults from the one list of variables.

voice/environment.py declares every variable once (name, typed default, meaning); settings.py
reads the environment through it into VOICE. `get_config` merges VOICE over those defaults (the
debug-toolbar pattern: CONFIG_DEFAULTS + get_config) and checks each value's type once more, so
that tests overriding VOICE get the same guarantee.

Cached, and dropped on Django's setting_changed signal so that override_settings works in tests.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from .engine import MODEL_TYPES
from .environment import KINDS, VARIABLES, Variable

DEFAULTS: dict[str, Any] = {variable.key: variable.default for variable in VARIABLES if variable.key}


@cache
def get_config() -> dict[str, Any]:
    """The voice app's settings: VOICE over DEFAULTS, each value of its default's type."""
    config = {**DEFAULTS, **getattr(settings, "VOICE", {})}
    for key, value in config.items():
        variable: Variable | None = KINDS.get(key)
        if variable is not None and not _fits(value, variable.kind):
            raise ImproperlyConfigured(
                f"VOICE[{key!r}] ({variable.env}) must be {variable.kind.__name__}, not {type(value).__name__}: {value!r}"
            )
    return config


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "VOICE":
        get_config.cache_clear()


def model_references() -> dict[str, str]:
    """Each model type's Hub repo id or local folder ("" = not configured): SFT_MODEL, BASE_MODEL, ..."""
    config = get_config()
    return {model_type: config[f"{model_type.upper()}_MODEL"] for model_type in MODEL_TYPES}


def demo_dir() -> Path:
    path = Path(get_config()["DEMO_CHECKPOINT_DIR"])
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path


def engine_socket() -> Path:
    """REALTIME_ENGINE_SOCKET, relative to the repository unless absolute."""
    path = Path(get_config()["ENGINE_SOCKET"])
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)
