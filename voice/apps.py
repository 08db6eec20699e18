"""The voice app: loads the ModelManager once per serving process."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .engine.manager import ManagerConfig

log = logging.getLogger(__name__)

SERVING_PROGRAMS = {"daphne", "uvicorn", "hypercorn"}


def process_serves(argv: list[str]) -> bool:
    """True for a server process; migrate, makemigrations, shell and test runs don't want a model."""
    program = os.path.basename(argv[0]) if argv else ""
    if program in SERVING_PROGRAMS:
        return True
    return program == "manage.py" and len(argv) > 1 and argv[1] == "runserver"  # (not run_engine: it loads its own)


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


ENGINE_PROCESS_MODES = ("child", "external", "inline")


def manager_config() -> ManagerConfig:
    """The ModelManager's configuration from settings (here, or in the engine process)."""
    from .conf import demo_dir, get_config, model_references
    from .engine.manager import ManagerConfig

    config = get_config()
    return ManagerConfig(
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
    )


def load_models() -> None:
    """Give this process its manager, by REALTIME_ENGINE_PROCESS; a model that fails to load stops start-up.

    `child` starts an engine process and waits for it, `external` connects to one a supervisor
    runs (not waiting: /readyz says when it answers), `inline` loads the models here.
    """
    from .conf import engine_socket, get_config
    from .engine.manager import ModelLoadError, install_manager, set_manager
    from .engine.remote import RemoteManager

    config = get_config()
    mode = config["ENGINE_PROCESS"]
    if mode not in ENGINE_PROCESS_MODES:
        raise ImproperlyConfigured(
            f"REALTIME_ENGINE_PROCESS={mode!r}: expected one of {', '.join(ENGINE_PROCESS_MODES)}"
        )
    try:
        if mode == "inline":
            install_manager(manager_config())
            return
        socket_path = engine_socket() if mode == "external" else private_socket()
        if mode == "child":
            start_child_engine(socket_path, config["ENGINE_START_TIMEOUT_S"])
        set_manager(RemoteManager(socket_path, inbox_frames=config["INPUT_QUEUE_FRAMES"]))
    except ModelLoadError as exc:
        raise ImproperlyConfigured(f"Moshi model failed to load, not starting: {exc}") from exc


def private_socket() -> Path:
    """A socket path only this server knows (short: Unix socket paths have a ~100-byte limit)."""
    return Path(tempfile.mkdtemp(prefix="realtime-engine-")) / "engine.sock"


def start_child_engine(socket_path: Path, start_timeout: float) -> None:
    from django.conf import settings

    from .engine.child import ChildEngine

    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "run_engine"]
    child = ChildEngine(command, socket_path, start_timeout, private_dir=True)
    atexit.register(child.stop)
    child.start()
