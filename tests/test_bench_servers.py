"""bench/servers.py and bench/step_cost.py, the parts that need no server and no model.

The process-tree helpers are tried on `sleep` processes this test starts (and always ends, by PID);
the supervisor launcher's reading of its config on configs written here; step_cost's figures and
table on made-up timings.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import servers
from bench.servers import (
    DaphneServer,
    SupervisorServer,
    cpu_seconds_of,
    kill_leftovers,
    machine_cpu_seconds,
    make_server,
    start_time,
    supervisor_env_names,
    tree_cpu_seconds,
    tree_pids,
)
from bench.step_cost import percentile, summary_ms, table

# --- the process tree ---------------------------------------------------------------------------


@pytest.fixture
def shell_with_child():
    """A shell whose child is a sleep: a two-process tree, ended by PID whatever happens."""
    shell = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & wait"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while len(tree_pids(shell.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield shell
    finally:
        for pid in reversed(tree_pids(shell.pid)):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        shell.wait(timeout=10)


def test_tree_pids_walks_the_descendants(shell_with_child: subprocess.Popen[bytes]) -> None:
    pids = tree_pids(shell_with_child.pid)
    assert pids[0] == shell_with_child.pid and len(pids) == 2
    assert servers.parents()[pids[1]] == shell_with_child.pid
    import os

    mine = tree_pids(os.getpid())
    assert shell_with_child.pid in mine and pids[1] in mine


def test_cpu_seconds(shell_with_child: subprocess.Popen[bytes]) -> None:
    own = cpu_seconds_of(shell_with_child.pid)
    assert own is not None and own >= 0.0
    total = tree_cpu_seconds(shell_with_child.pid)
    assert total is not None and total >= own
    assert (machine_cpu_seconds() or 0.0) > 0.0


def test_a_process_gone_has_no_figures() -> None:
    done = subprocess.Popen(["true"])
    done.wait(timeout=10)
    assert tree_cpu_seconds(done.pid) is None and cpu_seconds_of(done.pid) is None
    assert start_time(done.pid) is None


def test_kill_leftovers_ends_what_is_still_alive(shell_with_child: subprocess.Popen[bytes]) -> None:
    shell, child = tree_pids(shell_with_child.pid)
    seen = {child: start_time(child), 999999999: 1, 1: None}
    assert kill_leftovers(seen, grace_s=5.0) == [child]  # the one alive as itself, by PID
    deadline = time.monotonic() + 5
    while start_time(child) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # the shell reaps it
    assert start_time(child) is None or (servers._stat(child) or ["Z"])[0] == "Z"
    assert kill_leftovers({}, grace_s=0.1) == []


# --- the supervisor launch ----------------------------------------------------------------------


def test_supervisor_env_names_read_from_the_config(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "; run: supervisord -n -c deploy/supervisord.conf\n"
        "[supervisord]\npidfile=%(ENV_REALTIME_RUN_DIR)s/supervisord.pid\n"
        "[fcgi-program:web]\nsocket=tcp://%(ENV_REALTIME_HOST)s:%(ENV_REALTIME_PORT)s\n"
        "numprocs=%(ENV_REALTIME_WEB_WORKERS)s\n"
    )
    assert supervisor_env_names(conf) == {
        "workers": "REALTIME_WEB_WORKERS",
        "host": "REALTIME_HOST",
        "port": "REALTIME_PORT",
        "run_dir": "REALTIME_RUN_DIR",
    }
    # Without the file: the names its header documents.
    assert supervisor_env_names(tmp_path / "missing.conf") == {
        "workers": "REALTIME_WEB_WORKERS",
        "host": "REALTIME_HOST",
        "port": "REALTIME_PORT",
        "run_dir": "REALTIME_RUN_DIR",
    }


def test_supervisor_env_names_of_the_real_config() -> None:
    assert supervisor_env_names() == servers.SUPERVISOR_ENV


def test_make_server_picks_the_launch(tmp_path: Path) -> None:
    one = make_server("batched", 1, 16, tmp_path, tmp_path / "one.log")
    assert isinstance(one, DaphneServer) and one.workers == 1
    assert one.env["REALTIME_MAX_SESSIONS"] == "16" and one.env["RESPONSE_MAX_MS"] == "3600000"
    conf = tmp_path / "supervisord.conf"
    conf.write_text("port=%(ENV_BIND_PORT)s host=%(ENV_BIND_HOST)s workers=%(ENV_REALTIME_WEB_WORKERS)s\n")
    two = SupervisorServer("batched", 40, tmp_path, tmp_path / "two.log", 2, conf=conf)
    assert two.workers == 2 and two.env["REALTIME_WEB_WORKERS"] == "2"
    assert (two.env["BIND_PORT"], two.env["BIND_HOST"]) == (str(two.port), "127.0.0.1")
    assert two.url == f"http://127.0.0.1:{two.port}" and two.pid is None and two.cpu_seconds() is None
    two.stop()  # never started: nothing to stop, nothing left
    assert two.leftovers == []
    assert isinstance(make_server("batched", 2, 40, tmp_path, tmp_path / "x.log"), SupervisorServer)


def test_a_supervisor_launch_without_its_config_says_so(tmp_path: Path) -> None:
    server = SupervisorServer("batched", 8, tmp_path, tmp_path / "s.log", 2, conf=tmp_path / "missing.conf")
    with pytest.raises(RuntimeError, match="does not exist"):
        server.start(timeout=5)


# --- step_cost: figures and table ---------------------------------------------------------------


def test_percentile_and_summary() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
    assert summary_ms([0.015625, 0.03125, 0.0625]) == {"p50_ms": 31.25, "p95_ms": 62.5}
    assert summary_ms([]) == {"p50_ms": None, "p95_ms": None}


def test_step_cost_table() -> None:
    result = {
        "width": 8,
        "threads": 1,
        "step": {"p50_ms": 21.5, "p95_ms": 22.0},
        "per_row_ms": 2.69,
        "rtf": 0.269,
        "encode": {"p50_ms": 4.25},
        "lm": {"p50_ms": 12.75},
        "decode": {"p50_ms": 4.0},
    }
    assert table([result, {"width": 16, "failure": "exit 1: boom\nMemoryError"}]) == [
        "width  step p50     p95  per row    RTF  encode      LM  decode  threads",
        "    8      21.5    22.0      2.7  0.269     4.2    12.8     4.0        1",
        "   16  failed: MemoryError",
    ]


def test_step_cost_refuses_bad_widths() -> None:
    script = str(Path(__file__).resolve().parent.parent / "bench" / "step_cost.py")
    done = subprocess.run(
        [sys.executable, script, "--widths", "0"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2 and "--widths needs positive integers" in done.stderr


# --- which process answered ----------------------------------------------------------------------


def test_the_answering_process_is_found_by_its_socket() -> None:
    """A keep-alive HTTP server in a thread of this process: the answer names this PID."""
    import http.server
    import os
    import threading

    from bench.scraping import SERVER_PID_SAMPLE, process_key
    from bench.servers import get_naming_the_pid, scrape_naming_the_pid

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = b"# TYPE up gauge\nup 1.0\n" if self.path == "/metrics" else b"no"
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        samples = scrape_naming_the_pid(port, [os.getpid()])
        assert samples[("up", ())] == 1.0 and samples[(SERVER_PID_SAMPLE, ())] == float(os.getpid())
        assert process_key(samples) == f"pid {os.getpid()}"
        assert get_naming_the_pid(port, "/other", [os.getpid()])[:2] == (404, "no")
        assert (SERVER_PID_SAMPLE, ()) not in scrape_naming_the_pid(port, [])  # not among the candidates
    finally:
        server.shutdown()
        server.server_close()
