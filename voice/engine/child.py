"""An engine process started, watched and restarted by the server process that needs it.

With REALTIME_ENGINE_PROCESS=child (the default), a plain `daphne realtime_project.asgi:application`
starts its own engine process (`manage.py run_engine`) from AppConfig.ready and waits until its
models are loaded and warm, so that start-up still fails loudly when a model cannot be loaded.
Afterwards a watcher thread notices at once when the engine exits and starts it again (its
sessions have already been told and closed by their own connections: see remote.py); while it
loads, /readyz answers 503 and new sessions are refused with a "try again". The engine exits by
itself when this process is gone, so a server killed outright leaves no engine behind.

Under a supervisor (deploy/supervisord.conf) the supervisor starts and restarts the engine
instead, and the workers use REALTIME_ENGINE_PROCESS=external.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .checkpoint import ModelLoadError
from .remote import query_status
from .wire import WireError

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after each failed start in a row


class ChildEngine:
    def __init__(
        self, command: list[str], socket_path: Path, start_timeout: float, *, private_dir: bool = False
    ) -> None:
        """``command`` runs `manage.py run_engine`; --socket, --parent and --error-file are added.
        ``private_dir``: the socket's folder is this engine's own, removed when it stops."""
        self.command = command
        self.socket_path = socket_path
        self.private_dir = private_dir
        self.start_timeout = start_timeout
        descriptor, error_file = tempfile.mkstemp(prefix="engine-error-", suffix=".txt")
        os.close(descriptor)
        self.error_file = Path(error_file)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="engine-watcher", daemon=True)

    def start(self) -> None:
        """Start the engine and wait until it is ready; ModelLoadError with its reason if it is not."""
        self._spawn()
        self._wait_ready()
        self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._terminate(self.process, timeout)
        self.error_file.unlink(missing_ok=True)
        if self.private_dir:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self) -> None:
        self.error_file.write_text("")
        env = {**os.environ, "VOICE_LOAD_MODEL": "0"}  # the engine loads its models itself, once
        arguments = ["--socket", str(self.socket_path), "--parent", str(os.getpid())]
        arguments += ["--error-file", str(self.error_file)]
        # Its own session: a Ctrl-C in the terminal reaches the server, which drains its sessions
        # and then stops the engine, instead of killing the engine under them.
        self.process = subprocess.Popen([*self.command, *arguments], env=env, start_new_session=True)
        log.info("engine process %d started", self.process.pid)

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._stopping.is_set():
                raise ModelLoadError("the server is stopping")
            code = self.process.poll()
            if code is not None:
                reason = self.error_file.read_text().strip() or f"the engine process exited with code {code}"
                raise ModelLoadError(reason)
            try:
                if query_status(self.socket_path, timeout=1.0).get("ready"):
                    return
            except (OSError, WireError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise ModelLoadError(
                    f"the engine process was not ready after {self.start_timeout:g}s (REALTIME_ENGINE_START_TIMEOUT_S)"
                )
            time.sleep(0.1)

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            if self._stopping.is_set():
                return
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
            log.error("engine process %d exited with code %s; restarting it in %.1fs", self.process.pid, code, delay)
            if self._stopping.wait(delay):
                return
            try:
                self._spawn()
                self._wait_ready()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a failed start (EMFILE, a bad model)
                failures += 1
                log.error("engine restart failed: %s", exc)
                continue
            failures = 0
            self.restarts += 1
            log.info("engine process %d is back", self.process.pid)
        self._terminate(self.process)  # one started while the server was stopping
