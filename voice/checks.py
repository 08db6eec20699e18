"""System checks for configuration mistakes that would otherwise show up only at the first call."""

from __future__ import annotations

import os
import sys
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
            errors.append(checks.Error(f"{key} points to {reference}, which is not a folder.", id="voice.E001"))
    return errors


# A deployment check (manage.py check --deploy): one daphne process is served well by the in-memory
# layer, so every manage.py command outside DEBUG should not repeat it.
@checks.register(deploy=True)
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


def web_workers() -> int:
    """REALTIME_WEB_WORKERS as `make serve` resolves it: `0` = the cores this process may use (`nproc`)."""
    configured = get_config()["WEB_WORKERS"]
    if configured > 0:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Every command, DEBUG or not: `make serve` runs several workers by default, and its `migrate` is
# where a developer sees this.
@checks.register()
def check_workers_share_a_channel_layer(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    from .apps import process_serves

    if process_serves(sys.argv) and get_config()["ENGINE_PROCESS"] == "child":
        return []  # a bare daphne with its own engine: one worker, whatever REALTIME_WEB_WORKERS says
    workers = web_workers()
    if workers > 1 and not settings.REDIS_URL:
        return [
            checks.Warning(
                f"REALTIME_WEB_WORKERS resolves to {workers} daphne workers and REDIS_URL is empty: the staff "
                "console and API key revocation see only the sessions of the worker they reach.",
                hint="Set REDIS_URL (e.g. redis://127.0.0.1:6379/0) so that every worker shares one channel "
                "layer, or REALTIME_WEB_WORKERS=1 for a single worker.",
                id="voice.W003",
            )
        ]
    return []


@checks.register(checks.Tags.security, deploy=True)
def check_open_endpoint(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    from .auth import open_endpoint

    if not settings.DEBUG and open_endpoint():
        return [
            checks.Warning(
                "REALTIME_OPEN_ENDPOINT is on: anyone who can reach /v1/realtime may open sessions without an API key.",
                hint="Unset REALTIME_OPEN_ENDPOINT (or set it to auto) and create keys in the admin.",
                id="voice.W002",
            )
        ]
    return []


@checks.register(checks.Tags.security)
def check_console_origins(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    from .console.access import normalized_origin

    return [
        checks.Error(
            f"CONSOLE_ALLOWED_ORIGINS holds {origin!r}, which is not an origin.",
            hint="Write each as scheme://host[:port], e.g. https://voice.example.com, comma-separated.",
            id="voice.E002",
        )
        for origin in get_config()["CONSOLE_ALLOWED_ORIGINS"]
        if normalized_origin(origin) is None
    ]
