"""System checks for configuration mistakes that would otherwise show up only at the first call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import checks

from .conf import get_config


@checks.register()
def check_model_paths(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for key in ("SFT_MODEL", "BASE_MODEL", "PRETRAIN_MODEL"):
        reference = get_config()[key]
        if reference and (reference.startswith(("/", ".", "~"))) and not Path(reference).expanduser().is_dir():
            errors.append(
                checks.Error(f"{key} points to {reference}, which is not a folder.", id="voice.E001")
            )
    return errors


@checks.register()
def check_channel_layer(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if not settings.DEBUG and backend.endswith("InMemoryChannelLayer"):
        return [
            checks.Warning(
                "The in-memory channel layer cannot reach other worker processes.",
                hint="Set REDIS_URL when running more than one daphne process.",
                id="voice.W001",
            )
        ]
    return []
