"""The servers a run measures, started and stopped by the benchmark, and the CPU they use.

* :class:`DaphneServer` -- worker count 1: a bare ``daphne realtime_project.asgi:application``
  (``voice.testing.live_server.LiveServer``), which in the default ``REALTIME_ENGINE_PROCESS``
  starts its own engine child process;
* :class:`SupervisorServer` -- worker count N >= 2: the production launch, ``supervisord -n -c
  deploy/supervisord.conf`` in the foreground with ``REALTIME_WEB_WORKERS=N``, the port and a run
  folder in its environment (the names are read from the config's header comment, see
  :func:`supervisor_env_names`), ready when ``/healthz`` answers 200 on the port.

Both get a fresh SQLite database and demo checkpoint in a temporary folder, responses that never
end and no idle timeout. The CPU of a server is the sum over every process of its tree
(:func:`tree_cpu_seconds`: the launched process and all its descendants, found by walking
``/proc``: daphne and its engine child, or supervisord and all its programs), children already
reaped included. Stopping is SIGTERM to the launched process, a wait, and then, by PID, SIGKILL to
any process of the tree seen while it ran that is still alive (same PID and same start time): no
process is left behind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.scraping import SERVER_PID_SAMPLE, Samples, http_get, parse_metrics, scrape_processes
from voice.testing.live_server import REPO_ROOT, LiveServer

SUPERVISOR_CONF = REPO_ROOT / "deploy" / "supervisord.conf"

# The variables deploy/supervisord.conf's header documents (it refuses to start without one).
SUPERVISOR_ENV = {
    "workers": "REALTIME_WEB_WORKERS",
    "host": "REALTIME_HOST",
    "port": "REALTIME_PORT",
    "run_dir": "REALTIME_RUN_DIR",
}

# What every server of a run gets, whatever its launch.
BENCH_ENV = {
    "RESPONSE_MAX_MS": "3600000",  # responses never end on their own during a run
    "REALTIME_IDLE_TIMEOUT_S": "0",
    "REALTIME_OPEN_ENDPOINT": "1",  # no API key needed (the default under DEBUG anyway)
    "LOG_LEVEL": "WARNING",
}


# --- processes ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (field 3, the state, is [0])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parents() -> dict[int, int]:
    """pid -> parent pid of every process on the machine."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                out[int(entry)] = int(fields[1])
    return out


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (children, their children, ...), root first."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo += children.get(pid, [])
    return [pid for pid in found if pid == root or _stat(pid) is not None]


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def cpu_seconds_of(pid: int) -> float | None:
    """utime + stime of a process (all its threads) plus those of its children it has reaped."""
    fields = _stat(pid)
    if fields is None:
        return None
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds of ``root`` and every descendant alive now (None if root is gone)."""
    if _stat(root) is None:
        return None
    return sum(cpu_seconds_of(pid) or 0.0 for pid in tree_pids(root))


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine, all cores (from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def kill_leftovers(seen: dict[int, int | None], grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, each process of ``seen`` (pid -> start time) still alive as itself."""

    def alive() -> list[int]:
        return [pid for pid, started in seen.items() if started is not None and start_time(pid) == started]

    left = alive()
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def _connection_inode(server_port: int, client_port: int) -> str | None:
    """The socket inode of the server's side of a loopback TCP connection (/proc/net/tcp, tcp6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
            if int(local, 16) == server_port and int(remote, 16) == client_port and fields[9] != "0":
                return fields[9]
    return None


def pid_holding(inode: str, pids: list[int]) -> int | None:
    """Which of ``pids`` has the socket ``inode`` open."""
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
    return None


def get_naming_the_pid(port: int, path: str, pids: list[int], timeout: float = 10.0) -> tuple[int, str, int | None]:
    """GET ``path`` on 127.0.0.1:``port``: (status, body, which of ``pids`` answered or None), the
    answering process found by the inode of the server's side of the still-open connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        pid = None
        if connection.sock is not None:
            inode = _connection_inode(port, connection.sock.getsockname()[1])
            pid = pid_holding(inode, pids) if inode is not None else None
        return response.status, body, pid
    finally:
        connection.close()


def scrape_naming_the_pid(port: int, pids: list[int], timeout: float = 10.0) -> Samples:
    """``/metrics``, plus the PID that answered it as the sample ``SERVER_PID_SAMPLE`` (when found)."""
    status, body, pid = get_naming_the_pid(port, "/metrics", pids, timeout)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    samples = parse_metrics(body)
    if pid is not None:
        samples[(SERVER_PID_SAMPLE, ())] = float(pid)
    return samples


# --- the launches ---------------------------------------------------------------------------------


class _Measured:
    """What the command line reads of a server, whatever its launch."""

    workers = 1
    port: int
    process: subprocess.Popen[bytes] | None
    ready_info: dict[str, Any]
    startup_s: float
    exit_code: int | None
    leftovers: list[int]
    _seen: dict[int, int | None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def cpu_seconds(self) -> float | None:
        """CPU seconds of every process of the server (see :func:`tree_cpu_seconds`)."""
        if self.pid is None or self.process is None or self.process.poll() is not None:
            return None
        self.remember_tree()
        return tree_cpu_seconds(self.pid)

    def remember_tree(self) -> None:
        """Note the processes of the tree now, to make sure at the stop that none is left."""
        if self.pid is not None:
            for pid in tree_pids(self.pid):
                self._seen.setdefault(pid, start_time(pid))

    def scrape(self, url: str = "") -> Samples:
        """``/metrics`` of every worker, each sample tagged with the process that answered."""
        pids = tree_pids(self.pid) if self.pid is not None else []
        return scrape_processes(url or self.url, self.workers, scraper=lambda _: scrape_naming_the_pid(self.port, pids))

    def processes(self) -> int:
        return len(tree_pids(self.pid)) if self.pid is not None and _stat(self.pid) is not None else 0

    def _ready(self, started: float) -> None:
        self.startup_s = time.monotonic() - started
        self.remember_tree()
        with contextlib.suppress(ValueError):
            self.ready_info = json.loads(http_get(f"{self.url}/healthz")[1])

    def _after_stop(self) -> None:
        if self.process is not None:
            self.exit_code = self.process.returncode
        self.leftovers = kill_leftovers(self._seen)


class DaphneServer(_Measured, LiveServer):
    """Worker count 1: one bare daphne (its engine child, if any, counted with it)."""

    def __init__(self, engine: str, max_sessions: int, workdir: Path, log_path: Path, model: str = "") -> None:
        LiveServer.__init__(
            self,
            workdir,
            {
                "SFT_MODEL": model,  # "": the demo checkpoint (the launcher ignores the caller's SFT_MODEL)
                "REALTIME_ENGINE": engine,
                "REALTIME_MAX_SESSIONS": str(max_sessions),
                **BENCH_ENV,
            },
            log_path=log_path,
        )
        self.ready_info, self.startup_s, self.exit_code, self.leftovers, self._seen = {}, 0.0, None, [], {}

    def start(self, timeout: float) -> None:
        started = time.monotonic()
        LiveServer.start(self, timeout)
        self._ready(started)

    def stop(self) -> None:
        self.remember_tree()
        LiveServer.stop(self)
        self._after_stop()


def supervisor_env_names(conf: Path = SUPERVISOR_CONF) -> dict[str, str]:
    """The variables ``deploy/supervisord.conf`` reads for its workers, host, port and run folder.

    Read from the config itself: every ``%(ENV_NAME)s`` it expands, matched by what the name says
    (``WORKERS``, ``HOST``, ``PORT``, ``RUN``); without the file, the names its header documents.
    """
    names = dict(SUPERVISOR_ENV)
    try:
        text = conf.read_text()
    except OSError:
        return names
    names = {"workers": names["workers"], "host": "", "port": "", "run_dir": ""}
    found = sorted(
        set(re.findall(r"%\(ENV_([A-Za-z0-9_]+)\)", text)) | set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))
    )
    for name in found:
        upper = name.upper()
        if "WORKERS" in upper:
            names["workers"] = name
        elif "PORT" in upper and "SUPERVISOR" not in upper:
            names["port"] = names["port"] or name
        elif "HOST" in upper or "BIND" in upper:
            names["host"] = names["host"] or name
        elif "RUN" in upper and ("DIR" in upper or upper.endswith("RUN")):
            names["run_dir"] = names["run_dir"] or name
    return names


class SupervisorServer(_Measured, LiveServer):
    """Worker count N >= 2: ``supervisord -n -c deploy/supervisord.conf`` with N web workers."""

    def __init__(
        self,
        engine: str,
        max_sessions: int,
        workdir: Path,
        log_path: Path,
        workers: int,
        model: str = "",
        conf: Path = SUPERVISOR_CONF,
    ) -> None:
        LiveServer.__init__(
            self,
            workdir,
            {"SFT_MODEL": model, "REALTIME_ENGINE": engine, "REALTIME_MAX_SESSIONS": str(max_sessions), **BENCH_ENV},
            log_path=log_path,
        )
        self.workers = workers
        self.conf = conf
        self.run_dir = workdir / "run"
        names = supervisor_env_names(conf)
        self.env[names["workers"]] = str(workers)
        if names["host"]:
            self.env[names["host"]] = "127.0.0.1"
        if names["port"]:
            self.env[names["port"]] = str(self.port)
        if names["run_dir"]:
            self.env[names["run_dir"]] = str(self.run_dir)
        self.env_names = names
        self._healthy_pids: set[int] = set()
        # The config runs `daphne` and `python` from PATH: the virtualenv's first.
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', os.defpath)}"
        self.ready_info, self.startup_s, self.exit_code, self.leftovers, self._seen = {}, 0.0, None, [], {}

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(self.conf)]

    def ready(self) -> bool:
        self.remember_tree()
        return self._every_worker_healthy()

    def start(self, timeout: float) -> None:
        if not self.conf.exists():
            raise RuntimeError(f"{self.conf} does not exist (yet): worker counts above 1 need it")
        if not self.env_names["port"]:
            raise RuntimeError(f"{self.conf}: no port variable found in it ({self.env_names})")
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        LiveServer.start(self, timeout)
        info = self.ready_info
        self._ready(started)
        self.ready_info = self.ready_info if self.ready_info.get("ready") else info

    def _every_worker_healthy(self) -> bool:
        """/healthz 200 from ``workers`` different processes (each GET reaches the worker the
        kernel hands the connection to, so ask a few times)."""
        pids = tree_pids(self.pid) if self.pid is not None else []
        for _ in range(4 * self.workers):
            try:
                status, body, pid = get_naming_the_pid(self.port, "/healthz", pids, timeout=2)
            except (OSError, http.client.HTTPException):
                return False
            if status != 200:
                return False
            self._healthy_pids.add(pid if pid is not None else -len(self._healthy_pids) - 1)
            with contextlib.suppress(ValueError):
                self.ready_info = json.loads(body)
            if len(self._healthy_pids) >= self.workers:
                return True
        return False

    def stop(self) -> None:
        """SIGTERM to supervisord (it stops its programs first), wait, then no process left."""
        if self.process is not None and self.process.poll() is None:
            self.remember_tree()
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._after_stop()

    def log(self, tail_chars: int = 20000) -> str:
        """supervisord's own output, then the tail of every log its programs wrote in the run folder."""
        parts = [LiveServer.log(self, tail_chars)]
        for path in sorted(self.run_dir.rglob("*.log")) if self.run_dir.exists() else []:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail_chars:]}")
        return "\n".join(parts)


def make_server(
    engine: str, workers: int, max_sessions: int, workdir: Path, log_path: Path, model: str = ""
) -> DaphneServer | SupervisorServer:
    if workers <= 1:
        return DaphneServer(engine, max_sessions, workdir, log_path, model=model)
    return SupervisorServer(engine, max_sessions, workdir, log_path, workers, model=model)
