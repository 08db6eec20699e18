"""deploy/supervisord.conf, the process layout `make serve` and a deployment run: its contract, and the real thing.

The contract is read with supervisor's own parser (ServerOptions.realize, as `supervisord -c` reads
it) and the worker command with daphne's own argument parser. The end-to-end test runs supervisord
with two daphne workers on one port and the engine process they share, opens Realtime sessions
through that port, finds which worker holds each connection (/proc), and stops it all with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import websockets
from daphne.cli import CommandLineInterface
from daphne.endpoints import build_endpoint_description_strings
from django.core import checks
from supervisor.options import ServerOptions

from voice.environment import BY_ENV
from voice.testing.live_server import REPO_ROOT, LiveServer

from .conftest import TIMEOUT
from .e2e_support import Socket, ga_socket, query_db

CONF = REPO_ROOT / "deploy" / "supervisord.conf"
VENV_BIN = Path(sys.executable).parent
SHUTDOWN_GRACE_S = BY_ENV["REALTIME_SHUTDOWN_GRACE_S"].default
STARTUP_TIMEOUT = 6 * TIMEOUT  # migrate, then the engine's first load of the model, on a busy 2-core CPU


def contract_env(run_dir: Path, workers: int = 3, port: int = 8123) -> dict[str, str]:
    return {
        "REALTIME_WEB_WORKERS": str(workers),
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_PORT": str(port),
        "REALTIME_RUN_DIR": str(run_dir),
    }


def realize(env: dict[str, str], errors: io.StringIO | None = None) -> ServerOptions:
    """The configuration as `supervisord -c deploy/supervisord.conf` reads it in this environment."""
    with mock.patch.dict(os.environ, env):
        options = ServerOptions()
        options.stderr = errors or io.StringIO()  # where supervisord says why it refuses to start
        options.realize(args=["-c", str(CONF)])
    return options


def groups(options: ServerOptions) -> dict[str, object]:
    return {group.name: group for group in options.process_group_configs}


# --- the contract --------------------------------------------------------------------------------


def test_the_workers_and_the_engine_they_share(tmp_path: Path) -> None:
    options = realize(contract_env(tmp_path, workers=3, port=8123))
    assert options.nodaemon and options.pidfile == str(tmp_path / "supervisord.pid")
    assert options.server_configs[0]["file"] == str(tmp_path / "supervisor.sock")
    assert options.serverurl == f"unix://{tmp_path}/supervisor.sock"
    by_name = groups(options)
    assert set(by_name) == {"engine", "web"}
    engine, web = by_name["engine"], by_name["web"]
    assert engine.priority < web.priority, "the engine starts first and stops last"
    assert str(web.socket_config) == "tcp://127.0.0.1:8123"

    [engine_process] = engine.process_configs
    assert shlex.split(engine_process.command) == ["python", "manage.py", "run_engine"]
    engine_socket = str(tmp_path / "engine.sock")
    assert engine_process.environment["REALTIME_ENGINE_SOCKET"] == engine_socket

    assert [process.name for process in web.process_configs] == ["web-0", "web-1", "web-2"]
    for process in web.process_configs:
        assert process.environment["REALTIME_ENGINE_PROCESS"] == "external"
        assert process.environment["REALTIME_ENGINE_SOCKET"] == engine_socket

    for process in [engine_process, *web.process_configs]:
        assert Path(process.directory).resolve() == REPO_ROOT
        assert process.autorestart and process.autostart
        assert process.stopsignal == signal.SIGTERM
        assert process.stopwaitsecs > SHUTDOWN_GRACE_S + 5, "workers get their grace to drain sessions"
        assert process.stopasgroup and process.killasgroup
        assert process.stdout_logfile == "/dev/stdout" and process.stdout_logfile_maxbytes == 0
        assert process.redirect_stderr
        assert process.environment["PYTHONUNBUFFERED"] == "1"


def test_the_worker_command_is_daphne_on_the_inherited_socket_only(tmp_path: Path) -> None:
    [worker] = groups(realize(contract_env(tmp_path, workers=1)))["web"].process_configs
    program, *argv = shlex.split(worker.command)
    assert program == "daphne" and (VENV_BIN / "daphne").is_file()
    args = CommandLineInterface().parser.parse_args(argv)
    assert args.application == "realtime_project.asgi:application"
    assert args.file_descriptor == 0 and args.host is None and args.port is None and not args.unix_socket
    # daphne adds its default 127.0.0.1:8000 only when no binding at all is given: --fd 0 alone
    # listens on supervisord's socket and nothing else.
    assert build_endpoint_description_strings(file_descriptor=args.file_descriptor) == ["fd:fileno=0"]
    assert args.websocket_timeout == -1
    assert args.websocket_max_message_size == args.websocket_max_frame_size == 16777216
    # The workers face clients directly: X-Forwarded-* from a client must not be trusted.
    assert not args.proxy_headers


def test_two_instances_with_their_own_run_directories_share_nothing(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    one, two = realize(contract_env(first, port=8001)), realize(contract_env(second, port=8002))
    paths = [
        (options.pidfile, options.server_configs[0]["file"], groups(options)["engine"].process_configs[0].environment)
        for options in (one, two)
    ]
    assert paths[0][0] != paths[1][0] and paths[0][1] != paths[1][1]
    assert paths[0][2]["REALTIME_ENGINE_SOCKET"] != paths[1][2]["REALTIME_ENGINE_SOCKET"]


@pytest.mark.parametrize("missing", ["REALTIME_WEB_WORKERS", "REALTIME_HOST", "REALTIME_PORT", "REALTIME_RUN_DIR"])
def test_each_variable_of_the_contract_is_required(tmp_path: Path, missing: str) -> None:
    env = contract_env(tmp_path)
    del env[missing]
    errors = io.StringIO()
    with mock.patch.dict(os.environ, {}), pytest.raises(SystemExit):
        os.environ.pop(missing, None)  # restored on leaving
        realize(env, errors)
    assert f"names ('ENV_{missing}') which cannot be expanded" in errors.getvalue()


# --- the check -------------------------------------------------------------------------------------


def worker_warnings() -> list[checks.CheckMessage]:
    return [message for message in checks.run_checks() if message.id == "voice.W003"]


def test_several_workers_without_redis_get_a_warning(settings) -> None:
    settings.REDIS_URL = ""
    settings.VOICE = {**settings.VOICE, "WEB_WORKERS": 4}
    [warning] = worker_warnings()
    assert warning.level == checks.WARNING and "4 daphne workers" in warning.msg and "REDIS_URL" in warning.hint
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    assert worker_warnings() == []
    settings.REDIS_URL = ""
    settings.VOICE = {**settings.VOICE, "WEB_WORKERS": 1}
    assert worker_warnings() == []


def test_a_bare_daphne_with_its_own_engine_is_one_worker(settings) -> None:
    settings.REDIS_URL = ""
    settings.VOICE = {**settings.VOICE, "WEB_WORKERS": 4, "ENGINE_PROCESS": "child"}
    with mock.patch("sys.argv", ["/venv/bin/daphne", "realtime_project.asgi:application"]):
        assert worker_warnings() == []
    settings.VOICE = {**settings.VOICE, "ENGINE_PROCESS": "external"}  # a worker under the supervisor
    with mock.patch("sys.argv", ["/venv/bin/daphne", "--fd", "0", "realtime_project.asgi:application"]):
        assert len(worker_warnings()) == 1


@pytest.mark.parametrize(("cores", "warned"), [(1, False), (8, True)])
def test_zero_workers_means_one_per_core(settings, cores: int, warned: bool) -> None:
    settings.REDIS_URL = ""
    settings.VOICE = {**settings.VOICE, "WEB_WORKERS": 0}
    with mock.patch("os.sched_getaffinity", return_value=set(range(cores))):
        assert bool(worker_warnings()) is warned


# --- the real thing ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                with contextlib.suppress(OSError):
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def server_side_pid(client_address: tuple[str, int], server_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end of the loopback TCP connection from ``client_address``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if local_port == server_port and remote_port == client_address[1]:
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


class Supervised(LiveServer):
    """supervisord with deploy/supervisord.conf, in its own database, checkpoint and run directory.

    LiveServer's environment, port and log handling; supervisord instead of one daphne."""

    def __init__(self, workdir: Path, run_dir: Path, env: dict[str, str]) -> None:
        super().__init__(workdir, env, log_path=workdir / "supervisord.log")
        self.env.update(
            {
                **contract_env(run_dir, workers=int(self.env["REALTIME_WEB_WORKERS"]), port=self.port),
                "PATH": f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '/usr/bin:/bin')}",
            }
        )
        self.cwd = workdir  # started from elsewhere than the repository: the file says where programs run
        self._healthy_in_a_row = 0

    def command(self) -> list[str]:
        return [str(VENV_BIN / "supervisord"), "-n", "-c", str(CONF)]

    def ready(self) -> bool:
        """A few answers in a row, from whichever workers take them."""
        self._healthy_in_a_row = self._healthy_in_a_row + 1 if self._healthy() else 0
        return self._healthy_in_a_row >= 10

    def programs(self) -> dict[int, str]:
        assert self.process is not None
        return children(self.process.pid)


@pytest.fixture
def supervised(redis_url: str) -> Iterator[Supervised]:
    workdir = Path(tempfile.mkdtemp(prefix="rt-deploy-"))  # short: Unix socket paths live in it
    run_dir = workdir / "run"
    run_dir.mkdir()
    server = Supervised(
        workdir,
        run_dir,
        {"REALTIME_WEB_WORKERS": "2", "REDIS_URL": f"{redis_url}/5", "RESPONSE_MAX_MS": "800"},
    )
    try:
        server.start(STARTUP_TIMEOUT)
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            for pid in server.programs():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            server.process.kill()
            server.process.wait(timeout=TIMEOUT)
        shutil.rmtree(workdir, ignore_errors=True)


async def talk(server: Supervised, workers: list[int]) -> tuple[str, int | None]:
    """One session through the shared port: session.created, a response with audio; its worker."""
    async with ga_socket(server, wait_for_slot=True) as socket_:
        session_id = socket_.events[0]["session"]["id"]
        worker = server_side_pid(socket_.ws.local_address, server.port, workers)
        await socket_.send({"type": "response.create"})
        await socket_.recv_until("response.output_audio.delta", timeout=3 * TIMEOUT)
        await socket_.recv_until("response.done", timeout=3 * TIMEOUT)
    return session_id, worker


async def test_supervisord_serves_sessions_from_every_worker_and_stops_them_all(supervised: Supervised) -> None:
    programs = supervised.programs()
    workers = sorted(pid for pid, command in programs.items() if "daphne --fd 0" in command)
    engines = [pid for pid, command in programs.items() if "run_engine" in command]
    assert len(workers) == 2 and len(engines) == 1, programs

    # The kernel hands each connection to whichever worker accepts it first: both take some.
    held, seen = [], set()
    try:
        while seen != set(workers) and len(held) < 40:
            held.append(socket.create_connection(("127.0.0.1", supervised.port), timeout=TIMEOUT))
            address = held[-1].getsockname()
            deadline = time.monotonic() + TIMEOUT
            while (pid := server_side_pid(address, supervised.port, workers)) is None:
                assert time.monotonic() < deadline, "no worker accepted the connection"
                await asyncio.sleep(0.02)  # until a worker has accepted it
            seen.add(pid)
    finally:
        for connection in held:
            connection.close()
    assert seen == set(workers), f"{len(held)} connections, all to {seen}"

    # Six Realtime sessions at once through the one port, each answered with audio. A burst may
    # land on one worker; then more sessions, one at a time, until each worker has served one.
    results = await asyncio.gather(*(talk(supervised, workers) for _ in range(6)))
    while {worker for _, worker in results} != set(workers) and len(results) < 26:
        results.append(await talk(supervised, workers))
    assert {worker for _, worker in results} == set(workers), results
    assert len({session_id for session_id, _ in results}) == len(results)

    # Every session was stored in the one SQLite file the workers share.
    placeholders = ",".join("?" * len(results))
    stored = query_db(
        supervised.db_path,
        f"SELECT session_id FROM transcripts_conversation WHERE session_id IN ({placeholders})",
        *(session_id for session_id, _ in results),
    )
    assert len(stored) == len(results)

    # A session still open at SIGTERM is closed, and every program is gone within the grace.
    async with ga_socket(supervised, wait_for_slot=True) as open_session:
        supervised.process.send_signal(signal.SIGTERM)
        limit = SHUTDOWN_GRACE_S + TIMEOUT
        await closed(open_session, limit)
    await asyncio.to_thread(supervised.process.wait, limit)
    assert supervised.process.returncode == 0, supervised.log()
    assert [pid for pid in programs if (_stat(pid) or ("Z",))[0] != "Z"] == [], supervised.log()
    log = supervised.log()
    assert "stopped: web-0" in log and "stopped: web-1" in log and "stopped: engine" in log, log
    assert log.index("stopped: engine") > max(log.index("stopped: web-0"), log.index("stopped: web-1"))


async def closed(session: Socket, timeout: float) -> None:
    """Read until the server closes the connection (a TimeoutError if it does not within ``timeout``)."""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await session.ws.recv()
