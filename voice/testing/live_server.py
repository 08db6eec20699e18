"""A real daphne serving the project on a free port, in its own process, database and checkpoint.

End-to-end tests and the benchmark talk to it over TCP exactly as a client would; nothing of the
server runs in their process. Its stdout and stderr go to a log file that failures print.
(Like channels.testing.live, it lives in the package so that tests and bench/ share one copy.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables that would change what the server does if they leaked in from the caller's shell.
_SCRUBBED_PREFIXES = ("REALTIME_", "RESPONSE_", "ASR_", "COMPANION_", "MOSHI_", "DJANGO_")
_SCRUBBED = (
    "DATABASE_URL",
    "REDIS_URL",
    "SFT_MODEL",
    "BASE_MODEL",
    "PRETRAIN_MODEL",
    "VOICE_LOAD_MODEL",
    "DEMO_CHECKPOINT_DIR",
    "MEDIA_ROOT",
    "LOG_LEVEL",
)


def migrate(env: dict[str, str], timeout: float) -> None:
    """`manage.py migrate` with the server's environment; RuntimeError with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """`daphne realtime_project.asgi:application` on 127.0.0.1 with its own SQLite file."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.workdir = workdir
        self.db_path = workdir / "e2e.sqlite3"
        self.log_path = log_path or workdir / "daphne.log"
        self.port = free_port()
        self.cwd = REPO_ROOT  # where the server process starts
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in _SCRUBBED and not key.startswith(_SCRUBBED_PREFIXES)
        }
        self.env.update(
            {
                "DATABASE_URL": f"sqlite:///{self.db_path}",
                "DEMO_CHECKPOINT_DIR": str(workdir / "demo-checkpoint"),
                "DJANGO_SETTINGS_MODULE": "realtime_project.settings",
                # Development values, as `make serve` sets them (the settings refuse to start without a
                # key unless DEBUG); a caller's env overrides them.
                "DJANGO_DEBUG": "1",
                "DJANGO_SECRET_KEY": "live-server-tests-only-insecure-key",
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            }
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """What serves: one daphne here; a launcher of another layout (supervisord) overrides it."""
        daphne = Path(sys.executable).parent / "daphne"
        return [str(daphne), "-b", "127.0.0.1", "-p", str(self.port), "realtime_project.asgi:application"]

    def ready(self) -> bool:
        """Whether the server answers: /healthz says the model is ready."""
        return self._healthy()

    def start(self, timeout: float) -> None:
        """Migrate the database, start the server and wait until ``ready()``."""
        migrate(self.env, timeout)
        with self.log_path.open("ab") as log:  # append: a supervisor's programs append to it too
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        name = Path(self.command()[0]).name
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} exited with {self.process.returncode} before it was ready:\n{self.log()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} was not ready within {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.1)  # polling, bounded by the deadline above

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Terminate daphne (SIGTERM, then SIGKILL if it lingers) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def log(self, tail_chars: int = 20000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daphne log)"
        return text[-tail_chars:]
