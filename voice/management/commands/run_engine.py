"""`manage.py run_engine`: the model engine process that web workers send their sessions to."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from voice.apps import manager_config
from voice.conf import engine_socket
from voice.engine.manager import ModelLoadError, ModelManager
from voice.engine.service import EngineService

PARENT_CHECK_S = 0.5


class Command(BaseCommand):
    help = (
        "Load the models once and serve every web worker's sessions over a Unix socket "
        "(REALTIME_ENGINE_SOCKET). Started by a server with REALTIME_ENGINE_PROCESS=child, or by a "
        "supervisor for workers with REALTIME_ENGINE_PROCESS=external (deploy/supervisord.conf)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--socket", help="the Unix socket to listen on (default: REALTIME_ENGINE_SOCKET)")
        parser.add_argument("--parent", type=int, default=0, help="exit when the process with this PID is gone")
        parser.add_argument("--error-file", help="write why the models failed to load here")

    def handle(self, *args: Any, **options: Any) -> None:
        socket_path = Path(options["socket"]) if options["socket"] else engine_socket()
        manager = ModelManager(manager_config())
        try:
            manager.load()
        except ModelLoadError as exc:
            if options["error_file"]:
                Path(options["error_file"]).write_text(str(exc))
            raise CommandError(f"Moshi model failed to load: {exc}") from exc
        try:
            asyncio.run(self._serve(manager, socket_path, options["parent"]))
        finally:
            manager.stop()

    async def _serve(self, manager: ModelManager, socket_path: Path, parent: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        watcher = loop.create_task(self._watch_parent(parent, stop)) if parent else None
        try:
            await EngineService(manager, socket_path).serve(stop)
        finally:
            if watcher is not None:
                watcher.cancel()

    @staticmethod
    async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
        """A child engine ends with its server, even one killed without a chance to stop it."""
        while os.getppid() == parent:
            await asyncio.sleep(PARENT_CHECK_S)
        stop.set()
