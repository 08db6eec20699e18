"""The voice app: loads the ModelManager once per serving process."""

from __future__ import annotations

import logging
import os
import sys

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)

SERVING_PROGRAMS = {"daphne", "uvicorn", "hypercorn"}


def process_serves(argv: list[str]) -> bool:
    """True for a server process; migrate, makemigrations, shell and test runs don't want a model."""
    program = os.path.basename(argv[0]) if argv else ""
    if program in SERVING_PROGRAMS:
        return True
    return program == "manage.py" and len(argv) > 1 and argv[1] == "runserver"


class VoiceConfig(AppConfig):
    name = "voice"
    verbose_name = "Realtime voice"

    def ready(self) -> None:
        from . import checks, metrics  # noqa: F401 - checks registers the system checks
        from .engine.manager import get_manager
        from .runtime import live  # noqa: F401 - connects key revocation to live sessions

        metrics.watch_manager(get_manager)
        from .conf import get_config

        mode = str(get_config()["LOAD_MODEL"]).lower()
        if mode in {"1", "true", "yes", "on"} or (mode == "auto" and process_serves(sys.argv)):
            load_models()


def load_models() -> None:
    """Create the process's ModelManager from settings; a model that fails to load stops start-up."""
    from . import metrics
    from .conf import demo_dir, get_config, model_references
    from .engine.manager import ManagerConfig, ModelLoadError, install_manager

    config = get_config()
    manager_config = ManagerConfig(
        models=model_references(),
        demo_dir=demo_dir(),
        device=config["DEVICE"],
        max_sessions=config["MAX_SESSIONS"],
        tick_ms=config["TICK_MS"],
        inbox_frames=config["INPUT_QUEUE_FRAMES"],
        compile=config["TORCH_COMPILE"],
        seed=config["SEED"],
        engine=config["ENGINE"],
        resize_step=config["RESIZE_STEP"] or None,
        on_step=metrics.observe_step,
    )
    try:
        install_manager(manager_config)
    except ModelLoadError as exc:
        raise ImproperlyConfigured(f"Moshi model failed to load, not starting: {exc}") from exc
