"""Throwaway PostgreSQL and Redis servers for the test session, from the system's own binaries.

The suite needs both (the PostgreSQL column limits, two daphnes sharing a Redis channel layer),
and a laptop or a fresh CI runner has neither running. Unless TEST_POSTGRES_URL / TEST_REDIS_URL
name servers to use, each is started here on a free loopback port with a fresh data directory in
the session's temporary folder, and stopped at the end: CI and a laptop take the same path.
`make test` installs the packages (postgresql, redis-server) when they are missing.

PostgreSQL refuses to run as root; as root (CI, containers) it runs as the `postgres` system user
that Debian's package creates, as a direct child of the test process.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from voice.testing.live_server import free_port

STARTUP_S = 60.0


class ServiceUnavailable(RuntimeError):
    """A server the suite needs could not be started; the message says what to install or set."""


@dataclass
class Throwaway:
    """A server process of the test session and the URL it answers at."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    cleanup: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown; Redis exits too
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path and self.log_path.exists() else ""


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ServiceUnavailable(
            f"PostgreSQL's {name} was not found: install the postgresql package (`make test` does, as root) "
            "or set TEST_POSTGRES_URL to a server to use."
        )
    return found


def _as_postgres_user() -> dict[str, Any]:
    """Root may not run PostgreSQL: run it as the system user Debian's package made. The server is
    then our direct child (no `runuser` between), so stopping it signals PostgreSQL itself and a
    kill after the timeout cannot leave it running as an orphan."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def start_postgres() -> Throwaway:
    """initdb a fresh cluster (trust auth, user postgres), start it on a free port, wait for it.

    Its folder is made under the system's temporary directory, not pytest's (which only root may
    enter), and given to the postgres user when running as root.
    """
    workdir = Path(tempfile.mkdtemp(prefix="realtime-test-postgres-"))
    data, sockets = workdir / "data", workdir / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        if not _has_user("postgres"):
            raise ServiceUnavailable("running as root, but there is no `postgres` user to run PostgreSQL as")
        user = pwd.getpwnam("postgres")
        for path in (workdir, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    initdb = subprocess.run(
        [_postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        **_as_postgres_user(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if initdb.returncode != 0:
        raise ServiceUnavailable(f"initdb failed ({initdb.returncode}): {initdb.stderr[-2000:]}")
    port = free_port()
    log_path = workdir / "postgres.log"
    process = _spawn(
        [
            _postgres_bin("postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        log_path,
        **_as_postgres_user(),
    )
    service = Throwaway(f"postgresql://postgres@127.0.0.1:{port}/postgres", process, log_path, [workdir])
    _wait(service, lambda: _postgres_answers(service.url), "PostgreSQL")
    return service


def start_redis() -> Throwaway:
    """redis-server on a free port, nothing kept on disk."""
    workdir = Path(tempfile.mkdtemp(prefix="realtime-test-redis-"))
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(
            "redis-server was not found: install the redis-server package (`make test` does, as root) "
            "or set TEST_REDIS_URL to a server to use."
        )
    port = free_port()
    log_path = workdir / "redis.log"
    process = _spawn(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        log_path,
    )
    service = Throwaway(f"redis://127.0.0.1:{port}", process, log_path, [workdir])
    _wait(service, lambda: redis_answers(service.url), "Redis")
    return service


def _spawn(command: list[str], log_path: Path, **options: Any) -> subprocess.Popen[bytes]:
    """A server process of the test session, its output in its log file."""
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **options)


def redis_answers(url: str) -> bool:
    host, port = url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait(service: Throwaway, ready: object, what: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while not ready():  # type: ignore[operator]
        if service.process is not None and service.process.poll() is not None:
            service.stop()
            raise ServiceUnavailable(f"{what} exited with {service.process.returncode}:\n{service.log()}")
        if time.monotonic() > deadline:
            service.stop()
            raise ServiceUnavailable(f"{what} did not answer within {STARTUP_S:.0f}s:\n{service.log()}")
        time.sleep(0.1)  # polling the new server, bounded by the deadline above


def run_on_database(database_url: str, script: str, repo: Path) -> Any:
    """Migrate a fresh database, run ``script`` in `manage.py shell` against it, and return the JSON
    its last line prints: how the PostgreSQL tests store and read back through the real services."""
    env = {**os.environ, "DATABASE_URL": database_url, "VOICE_LOAD_MODEL": "0"}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=repo, env=env, check=True, timeout=120)
    result = subprocess.run(
        [*manage, "shell", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
