"""The command line: parse the arguments, start a daphne per engine mode, run each K, collect.

For each engine mode (``REALTIME_ENGINE=batched`` and ``serial``) :func:`bench_mode` starts its own
``daphne realtime_project.asgi:application`` on a free 127.0.0.1 port (fresh SQLite database and
demo checkpoint in a temporary folder, ``REALTIME_MAX_SESSIONS`` = the largest K, responses that
never end, no idle timeout), warms every slot up with unmeasured sessions, and then for each K
waits for the server to be idle, scrapes ``/metrics``, runs the K clients (``bench.clients``),
scrapes again, measures the CPU used by the server, by the benchmark itself and by everything else
on the machine, and summarises the K (``bench.summary``). :func:`main` assembles the results of
every mode and hands them to ``bench.report``. The server is stopped (by PID) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.clients import load_audio, run_k
from bench.frames import FRAME_S
from bench.matching import ANCHOR_TURN_DETECTION
from bench.report import header, machine_info, print_report, row, write_results
from bench.scraping import http_get, scrape, wait_for_idle
from bench.summary import REAL_TIME_BOUND_S, summarise
from voice.testing.live_server import LiveServer

# The --help description, and the first line of bench/realtime_bench.py's docstring.
TITLE = "How many concurrent Realtime sessions one server process holds in real time: batched vs serial."
REPO = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO = REPO / "tests" / "audio"
MODES = ("batched", "serial")


class Server(LiveServer):
    """One daphne per engine mode, in its own process, temporary folder, database and checkpoint."""

    def __init__(self, mode: str, max_sessions: int, workdir: Path, log_path: Path, model: str = "") -> None:
        super().__init__(
            workdir,
            {
                "SFT_MODEL": model,  # "": the demo checkpoint (the launcher ignores the caller's SFT_MODEL)
                "REALTIME_ENGINE": mode,
                "REALTIME_MAX_SESSIONS": str(max_sessions),
                "RESPONSE_MAX_MS": "3600000",  # responses never end on their own during a run
                "REALTIME_IDLE_TIMEOUT_S": "0",
                "REALTIME_OPEN_ENDPOINT": "1",  # no API key needed (the default under DEBUG anyway)
                "LOG_LEVEL": "WARNING",
            },
            log_path=log_path,
        )
        self.mode = mode
        self.ready_info: dict[str, Any] = {}
        self.startup_s = 0.0
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return self.http_url

    def start(self, timeout: float) -> None:
        started = time.monotonic()
        super().start(timeout)
        self.startup_s = time.monotonic() - started
        self.ready_info = json.loads(http_get(f"{self.url}/healthz")[1])

    def stop(self) -> None:
        super().stop()
        if self.process is not None:
            self.exit_code = self.process.returncode

    def cpu_seconds(self) -> float | None:
        """utime + stime of the daphne process (all its threads)."""
        if not self.alive() or self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine, all cores (from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def bench_mode(
    mode: str, ks: list[int], args: argparse.Namespace, audio: dict[str, bytes], out: Path
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"realtime-bench-{mode}-"))
    max_sessions = args.max_sessions or max(ks)
    server = Server(mode, max_sessions, workdir, out / f"daphne-{mode}.log", model=args.model)
    result: dict[str, Any] = {"mode": mode, "max_sessions": max_sessions, "ks": []}
    try:
        print(
            f"[{mode}] starting daphne on 127.0.0.1:{server.port} (REALTIME_MAX_SESSIONS={max_sessions}) ...",
            flush=True,
        )
        server.start(timeout=args.startup_timeout)
        result.update(port=server.port, startup_s=round(server.startup_s, 1), healthz=server.ready_info)
        print(f"[{mode}] ready in {server.startup_s:.1f}s: {server.ready_info}", flush=True)
        if args.warmup > 0:
            # Unmeasured sessions on every slot first: the first session after start-up, and the
            # first on each slot, pay one-time costs on the inference thread (each slot's own
            # TorchScript Silero VAD takes ~40-65 ms over its first two frames), which stall
            # every session, and a session never wins that latency back.
            sessions = args.warmup_sessions or max(ks)
            turn_detection = ANCHOR_TURN_DETECTION if args.anchors else None
            warm = asyncio.run(run_k(server.port, sessions, args.warmup, 1.0, audio, turn_detection))
            result["warmup"] = {
                "seconds": args.warmup,
                "sessions": sessions,
                "deltas": [len(run.delta_s) for run in warm],
                "failures": [run.failure for run in warm if run.failure],
            }
            print(f"[{mode}] warmed up with {sessions} session(s) for {args.warmup:g}s", flush=True)
            wait_for_idle(server.url, 30)
        for k in ks:
            if not server.alive():
                result["ks"].append({"k": k, "held_real_time": False, "reasons": ["server died"], "clients": []})
                continue
            if not wait_for_idle(server.url, 60):
                print(f"[{mode}] warning: the server was still busy before K={k}", flush=True)
            before = scrape(server.url)
            cpu_server, cpu_self, cpu_machine, wall = (
                server.cpu_seconds(),
                resource.getrusage(resource.RUSAGE_SELF),
                machine_cpu_seconds(),
                time.monotonic(),
            )
            turn_detection = ANCHOR_TURN_DETECTION if args.anchors else None
            runs = asyncio.run(run_k(server.port, k, args.seconds, args.drain, audio, turn_detection))
            wall = time.monotonic() - wall
            after = scrape(server.url)
            cpu_server_after, cpu_self_after = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
            cpu_machine_after = machine_cpu_seconds()
            # Percent of one core; the machine's includes everything else running on it.
            server_cpu = (
                100 * (cpu_server_after - cpu_server) / wall
                if cpu_server is not None and cpu_server_after is not None
                else None
            )
            bench_cpu = (
                100 * (cpu_self_after.ru_utime + cpu_self_after.ru_stime - cpu_self.ru_utime - cpu_self.ru_stime) / wall
            )
            machine_cpu = (
                100 * (cpu_machine_after - cpu_machine) / wall
                if cpu_machine is not None and cpu_machine_after is not None
                else None
            )
            cpu = {
                "wall_s": round(wall, 2),
                "server_cpu_percent": round(server_cpu, 1) if server_cpu is not None else None,
                "bench_client_cpu_percent": round(bench_cpu, 1),
                "machine_cpu_percent": round(machine_cpu, 1) if machine_cpu is not None else None,
                "other_processes_cpu_percent": round(machine_cpu - server_cpu - bench_cpu, 1)
                if machine_cpu is not None and server_cpu is not None
                else None,
                "load_average_1m_after": round(os.getloadavg()[0], 2),
            }
            summary = summarise(runs, before, after, cpu, anchored=args.anchors)
            result["ks"].append(summary)
            print(f"[{mode}] {row(mode, summary)}", flush=True)
    except Exception as exc:  # noqa: BLE001 - report what was measured so far
        result["failure"] = f"{type(exc).__name__}: {exc}"
        print(f"[{mode}] FAILED: {result['failure']}\n{server.log()}", flush=True)
    finally:
        server.stop()
        result["server_exit_code"] = server.exit_code  # after SIGTERM; negative: killed by that signal
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--ks", default="1,2,4,8,16", help="concurrent sessions to try, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of audio each client streams per K")
    parser.add_argument("--out", default="bench/out", help="folder for results.json, the plot and server logs")
    parser.add_argument("--modes", default=",".join(MODES), help="engine modes, comma-separated")
    parser.add_argument("--drain", type=float, default=4.0, help="seconds to wait for answers after the last frame")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of unmeasured sessions after start-up (0: none)"
    )
    parser.add_argument(
        "--warmup-sessions", type=int, default=0, help="sessions in the warm-up (default: the largest K, every slot)"
    )
    parser.add_argument(
        "--model",
        default="",
        help="SFT_MODEL of the server: a Hub repo id or local folder (default: the demo checkpoint)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=0,
        help="REALTIME_MAX_SESSIONS of the server (default: the largest K); larger shows an over-sized batch",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for migrate + model load")
    parser.add_argument("--audio-dir", default=str(DEFAULT_AUDIO), help="folder with the test speech (tests/audio)")
    parser.add_argument(
        "--no-anchors",
        dest="anchors",
        action="store_false",
        help="turn_detection: null instead of a non-acting server_vad (matching by threshold only)",
    )
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not ks or min(ks) < 1 or any(mode not in MODES for mode in modes) or 0 < args.max_sessions < max(ks):
        parser.error(
            f"--ks needs positive integers, --modes a subset of {MODES}, --max-sessions at least the largest K"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    audio_dir = Path(args.audio_dir)
    audio = load_audio(audio_dir)
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine_info(audio_dir),
        "config": {
            "ks": ks,
            "seconds": args.seconds,
            "drain_s": args.drain,
            "warmup_s": args.warmup,
            "warmup_sessions": args.warmup_sessions or max(ks),
            "max_sessions": args.max_sessions or max(ks),
            "model": args.model or "demo checkpoint",
            "modes": modes,
            "frame_ms": FRAME_S * 1000,
            "real_time_bound_ms": REAL_TIME_BOUND_S * 1000,
            "growth_rule": "p95(last quarter) < 1.5 * p95(first quarter) + 40 ms",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "turn_detection": ANCHOR_TURN_DETECTION if args.anchors else None,
        },
        "runs": {},
    }
    print(header(), flush=True)
    for mode in modes:
        results["runs"][mode] = bench_mode(mode, ks, args, audio, out)
        results["device"] = results["runs"][mode].get("healthz", {}).get("device", results.get("device"))
    results["machine"]["device"] = results.get("device")

    largest: dict[str, int | None] = {}
    for mode, run in results["runs"].items():
        held = [s["k"] for s in run["ks"] if s["held_real_time"]]
        largest[mode] = max(held) if held else None
    results["largest_k_real_time"] = largest
    batched, serial = largest.get("batched"), largest.get("serial")
    results["ratio_batched_over_serial"] = round(batched / serial, 2) if batched and serial else None
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    write_results(results, out)
    print_report(results, out)
    return 0
