"""ModelManager: the process-wide owner of the loaded models, one batched engine per model type.

Created once per serving process (VoiceConfig.ready). Sessions ask it for a slot of the model type
they chose (sft, base or pretrain); the SFT model is required, the other two are optional.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import DEFAULT_MODEL_TYPE, MODEL_TYPES
from .batched import STEP_BUCKETS, BatchedEngine
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

    def model_names(self) -> dict[str, str]:
        """Each loaded model type's model name."""
        return {model_type: engine.model.name for model_type, engine in self.engines.items()}

    def acquire(self, model_type: str, loop: asyncio.AbstractEventLoop) -> Slot | None:
        """A slot of that model type, or None when all are taken. KeyError if the type is not loaded."""
        return self.engines[model_type].acquire(loop)

    async def open_slot(self, model_type: str, *, paced: bool = False, detect_speech: bool = True) -> Slot | None:
        """A slot for a session on the running loop, or None when every slot is taken.

        The same call as RemoteManager.open_slot (an engine in another process), so that the
        session runtime does not care where the model runs.
        """
        slot = self.acquire(model_type, asyncio.get_running_loop())
        if slot is not None:
            slot.paced = paced
            slot.detect_speech = detect_speech
        return slot

    async def fresh_status(self) -> dict:
        return self.status()

    def status(self, max_age: float = 0.0) -> dict:
        """Slots and step statistics per model type: what /readyz and /metrics show, and what the
        engine service sends to web workers (the same dict, whichever process the model is in).
        Always current here (``max_age`` is RemoteManager's cache bound)."""
        return {
            "device": str(self.device),
            "ready": self.ready,
            "models": {model_type: engine_status(engine) for model_type, engine in self.engines.items()},
        }

    def stop(self) -> None:
        for engine in self.engines.values():
            engine.stop()


def engine_status(engine: BatchedEngine | SerialPool) -> dict:
    """One engine's slots and steps, as plain JSON values."""
    engines = engine.engines if isinstance(engine, SerialPool) else [engine]
    slots = [slot for slot in list(engine.slots) if slot is not None]
    buckets = [sum(column) for column in zip(*(e.stats.step_buckets for e in engines), strict=True)]
    recent = sorted(seconds for e in engines for seconds in list(e.stats.step_seconds))
    return {
        "name": engine.model.name,
        "slots": engine.batch_size,
        "in_use": len(slots),
        "queued_frames": sum(slot.queued_frames for slot in slots),
        "rows": sum(e.stats.rows for e in engines),
        "steps": sum(e.stats.steps for e in engines),
        "step_seconds_sum": sum(e.stats.step_seconds_sum for e in engines),
        "step_buckets": [[bound, count] for bound, count in zip((*STEP_BUCKETS, "+Inf"), buckets, strict=True)],
        "last_step_s": max((e.stats.last_step_s for e in engines), default=0.0),
        "recent_step_p50_s": recent[len(recent) // 2] if recent else None,
    }


_manager: Any = None  # a ModelManager, or a RemoteManager (voice/engine/remote.py)
_manager_lock = threading.Lock()


def get_manager() -> Any:
    """The process's manager: a ModelManager (the model runs here) or a RemoteManager (in an
    engine process); both have ready, model_names(), open_slot() and status()."""
    return _manager


def set_manager(manager: Any) -> None:
    """Install a manager built elsewhere (the RemoteManager of a web worker)."""
    global _manager
    with _manager_lock:
        _manager = manager


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
