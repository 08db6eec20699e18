"""ModelManager: the process-wide owner of the loaded models, one batched engine per model type.

Created once per serving process (VoiceConfig.ready). Sessions ask it for a slot of the model type
they chose (sft, base or pretrain); the SFT model is required, the other two are optional.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import DEFAULT_MODEL_TYPE, MODEL_TYPES
from .batched import BatchedEngine
from .checkpoint import ModelLoadError, load_model, resolve_device
from .demo_checkpoint import write_demo_checkpoint
from .serial import SerialPool
from .slots import Slot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagerConfig:
    """What the manager needs from settings (see voice/conf.py)."""

    models: dict[str, str]  # model type -> Hub repo id or local folder; "" = not configured
    demo_dir: Path
    device: str = "auto"
    max_sessions: int = 8
    tick_ms: float = 80.0
    inbox_frames: int = 64
    compile: str = "auto"
    seed: int = 0
    engine: str = "batched"  # "serial": the seed's one-session-at-a-time design, for benchmarks
    # The batched state grows and shrinks in steps of this many rows; None: 8 on the CPU, a fixed
    # full-width state on CUDA (see BatchedEngine).
    resize_step: int | None = None
    # Told (model type, seconds) after each model step, on the inference thread: the metrics.
    on_step: Callable[[str, float], None] | None = None


class ModelManager:
    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.engines: dict[str, BatchedEngine | SerialPool] = {}
        self.ready = False

    def load(self) -> None:
        """Load every configured model, warm it up and start its inference thread.

        Raises ModelLoadError with the cause when a configured model cannot be loaded: a server
        that silently fell back to another model would answer with the wrong voice.
        """
        references = dict(self.config.models)
        if not references.get(DEFAULT_MODEL_TYPE):
            demo = self.config.demo_dir
            if not (demo / "config.json").is_file():
                log.warning("no SFT_MODEL configured and no demo checkpoint yet: writing one to %s", demo)
                write_demo_checkpoint(demo)
            log.warning(
                "no SFT_MODEL configured: serving the DEMO checkpoint at %s (random weights, its output is noise)", demo
            )
            references[DEFAULT_MODEL_TYPE] = str(demo)
        compile_models = self.config.compile == "on" or (self.config.compile == "auto" and self.device.type == "cuda")
        for model_type in MODEL_TYPES:
            reference = references.get(model_type)
            if not reference:
                continue
            model = load_model(reference, self.device)
            options = {
                "tick_s": self.config.tick_ms / 1000.0,
                "inbox_frames": self.config.inbox_frames,
                "compile": compile_models,
                "seed": self.config.seed,
                "on_step": functools.partial(self.config.on_step, model_type) if self.config.on_step else None,
            }
            engine: BatchedEngine | SerialPool
            if self.config.engine == "serial":
                engine = SerialPool(model, sessions=self.config.max_sessions, **options)
            else:
                engine = BatchedEngine(
                    model, batch_size=self.config.max_sessions, resize_step=self.config.resize_step, **options
                )
            engine.start()
            self.engines[model_type] = engine
            log.info(
                "model type %s ready: %s on %s, %d slots", model_type, model.name, self.device, self.config.max_sessions
            )
        self.ready = True

    def model_name(self, model_type: str) -> str:
        return self.engines[model_type].model.name

    def acquire(self, model_type: str, loop: asyncio.AbstractEventLoop) -> Slot | None:
        """A slot of that model type, or None when all are taken. KeyError if the type is not loaded."""
        return self.engines[model_type].acquire(loop)

    def stop(self) -> None:
        for engine in self.engines.values():
            engine.stop()


_manager: ModelManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> ModelManager | None:
    return _manager


def install_manager(config: ManagerConfig) -> ModelManager:
    """Create and load the process's manager once; later calls return the same one."""
    global _manager
    with _manager_lock:
        if _manager is None:
            manager = ModelManager(config)
            manager.load()
            # Stop the inference threads before the interpreter tears down: a thread killed inside
            # torch aborts the process ("terminate called without an active exception").
            atexit.register(manager.stop)
            _manager = manager
        return _manager


__all__ = ["MODEL_TYPES", "ManagerConfig", "ModelLoadError", "ModelManager", "get_manager", "install_manager"]
