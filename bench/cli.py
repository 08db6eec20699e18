"""The command line: parse the arguments, start a server per configuration, run each K, collect.

A configuration is an engine (``REALTIME_ENGINE=batched``, or ``serial``: the old design, the
baseline), a worker count (1: a bare daphne; N >= 2: ``deploy/supervisord.conf`` with N web
workers, see ``bench.servers``) and a ``REALTIME_MAX_SESSIONS``. :func:`configurations` builds the
list: the batched engine at every ``--workers`` count x every ``--max-sessions`` value, then the
serial baseline (one worker, its batch the largest of ``--serial-ks``). For each,
:func:`bench_configuration` starts its server on a free 127.0.0.1 port, warms every slot up with
unmeasured sessions, and then for each K waits for the server to be idle, scrapes ``/metrics``
(every worker's), runs the K clients (``bench.clients``), scrapes again, measures the CPU used by
the server's processes, by the benchmark itself (the load generator, on the same cores) and by the
whole machine, and summarises the K (``bench.summary``). :func:`main` assembles the results of
every configuration and hands them to ``bench.report``. The server is stopped, and no process of
it left, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.clients import load_audio, run_k
from bench.frames import FRAME_S
from bench.matching import ANCHOR_TURN_DETECTION
from bench.report import header, machine_info, print_report, row, write_results
from bench.scraping import common_processes, max_of, processes_in, scrape, wait_for_idle
from bench.servers import machine_cpu_seconds, make_server
from bench.summary import HOLD_AUDIO_RATIO, HOLD_MAX_GAP_S, REAL_TIME_BOUND_S, summarise

# The --help description, and the first line of bench/realtime_bench.py's docstring.
TITLE = (
    "How many concurrent Realtime sessions a server holds in real time, at several batch sizes and "
    "worker counts, beside the serial baseline."
)
REPO = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO = REPO / "tests" / "audio"
MODES = ("batched", "serial")


def int_list(text: str) -> list[int]:
    return sorted({int(value) for value in text.split(",") if value.strip()})


def configurations(
    modes: list[str], workers: list[int], max_sessions: list[int], ks: list[int], serial_ks: list[int]
) -> list[dict[str, Any]]:
    """Every configuration a run measures, in order: name, engine, workers, max_sessions, ks."""
    out = []
    if "batched" in modes:
        for count in workers:
            for batch in max_sessions or [max(ks)]:
                out.append(
                    {
                        "name": f"batched w{count} max{batch}",
                        "engine": "batched",
                        "workers": count,
                        "max_sessions": batch,
                        "ks": ks,
                    }
                )
    if "serial" in modes:
        out.append(
            {
                "name": f"serial w1 max{max(serial_ks)}",
                "engine": "serial",
                "workers": 1,
                "max_sessions": max(serial_ks),
                "ks": serial_ks,
            }
        )
    return out


def mid_run(server: Any) -> dict[str, Any]:
    """The engine's state width and slots in use now, from one worker's /metrics (None: not exported)."""
    try:
        samples = scrape(server.url)
    except Exception:  # noqa: BLE001 - a figure missing, not a failed run
        return {"rows_mid_run": None, "slots_in_use_mid_run": None}
    return {
        "rows_mid_run": max_of(samples, "realtime_engine_rows"),
        "slots_in_use_mid_run": max_of(samples, "realtime_slots", state="in_use"),
    }


def scrape_or_nothing(scraper: Any, url: str) -> tuple[dict[Any, float], str | None]:
    """A scrape, or nothing and why: a server whose /metrics fails gives "n/a" figures, not a failed run."""
    try:
        return scraper(url), None
    except Exception as exc:  # noqa: BLE001
        return {}, f"{type(exc).__name__}: {exc}"[:200]


def cpu_percent(before: float | None, after: float | None, wall: float) -> float | None:
    """Percent of one core over ``wall`` seconds (None if either reading is missing)."""
    if before is None or after is None or wall <= 0:
        return None
    return round(100 * (after - before) / wall, 1)


def bench_configuration(
    config: dict[str, Any], args: argparse.Namespace, audio: dict[str, bytes], out: Path
) -> dict[str, Any]:
    name, ks = config["name"], config["ks"]
    tag = name.replace(" ", "-")
    workdir = Path(tempfile.mkdtemp(prefix=f"realtime-bench-{tag}-"))
    server = make_server(
        config["engine"], config["workers"], config["max_sessions"], workdir, out / f"server-{tag}.log", args.model
    )
    result: dict[str, Any] = {**config, "ks": []}
    turn_detection = ANCHOR_TURN_DETECTION if args.anchors else None

    scraper = server.scrape

    try:
        print(f"[{name}] starting on 127.0.0.1:{server.port} ...", flush=True)
        server.start(timeout=args.startup_timeout)
        result.update(
            port=server.port,
            startup_s=round(server.startup_s, 1),
            healthz=server.ready_info,
            server_processes=server.processes(),
        )
        print(
            f"[{name}] ready in {server.startup_s:.1f}s, {server.processes()} process(es): {server.ready_info}",
            flush=True,
        )
        if args.warmup > 0:
            # Unmeasured sessions on every slot first: the first session after start-up, and the
            # first on each slot, pay one-time costs, which stall every session, and a session
            # never wins that latency back.
            sessions = min(args.warmup_sessions or max(ks), config["max_sessions"])
            warm = asyncio.run(run_k(server.port, sessions, args.warmup, 1.0, audio, turn_detection))
            result["warmup"] = {
                "seconds": args.warmup,
                "sessions": sessions,
                "deltas": [len(run.delta_s) for run in warm],
                "failures": [run.failure for run in warm if run.failure],
            }
            print(f"[{name}] warmed up with {sessions} session(s) for {args.warmup:g}s", flush=True)
            wait_for_idle(server.url, 30, scraper=scraper)
        failed_in_a_row = 0
        for k in ks:
            if not server.alive():
                result["ks"].append({"k": k, "held": False, "reasons": ["server died"], "clients": []})
                continue
            if args.stop_after and failed_in_a_row >= args.stop_after:
                result["ks"].append(
                    {"k": k, "held": False, "reasons": [f"skipped: {failed_in_a_row} K(s) not held"], "clients": []}
                )
                continue
            if not wait_for_idle(server.url, 60, scraper=scraper):
                print(f"[{name}] warning: the server was still busy before K={k}", flush=True)
            before, metrics_error = scrape_or_nothing(scraper, server.url)
            cpu_server, cpu_self, cpu_machine, wall = (
                server.cpu_seconds(),
                resource.getrusage(resource.RUSAGE_SELF),
                machine_cpu_seconds(),
                time.monotonic(),
            )
            # Halfway through the stream: how wide the engine's state is with K sessions live.
            middle: dict[str, Any] = {}
            probe = threading.Timer(1.0 + args.seconds / 2, lambda found=middle: found.update(mid_run(server)))
            probe.start()
            try:
                runs = asyncio.run(run_k(server.port, k, args.seconds, args.drain, audio, turn_detection))
            finally:
                probe.cancel()
                probe.join(timeout=15)
            wall = time.monotonic() - wall
            cpu_server_after, cpu_self_after = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
            cpu_machine_after = machine_cpu_seconds()
            after, error_after = scrape_or_nothing(scraper, server.url)
            metrics_error = metrics_error or error_after
            # Figures from both scrapes or from neither (n/a): one alone would count the lifetime.
            before, after = common_processes(before, after) if not metrics_error else ({}, {})
            # Percent of one core (the machine's: of all its cores together, so up to 100 x cores).
            server_cpu = cpu_percent(cpu_server, cpu_server_after, wall)
            bench_cpu = cpu_percent(
                cpu_self.ru_utime + cpu_self.ru_stime, cpu_self_after.ru_utime + cpu_self_after.ru_stime, wall
            )
            machine_cpu = cpu_percent(cpu_machine, cpu_machine_after, wall)
            cpu = {
                "wall_s": round(wall, 2),
                "server_cpu_percent": server_cpu,
                "server_processes": server.processes(),
                "bench_client_cpu_percent": bench_cpu,
                "machine_cpu_percent": machine_cpu,
                "other_processes_cpu_percent": round(machine_cpu - server_cpu - (bench_cpu or 0.0), 1)
                if machine_cpu is not None and server_cpu is not None
                else None,
                "load_average_1m_after": round(os.getloadavg()[0], 2),
            }
            summary = summarise(runs, before, after, cpu, anchored=args.anchors)
            summary["metrics_processes"] = len(processes_in(after))  # workers whose /metrics were read
            summary["server"].update(middle)
            if metrics_error:
                summary["metrics_error"] = metrics_error
                print(f"[{name}] warning: /metrics: {metrics_error}; the server's figures are n/a", flush=True)
            result["ks"].append(summary)
            failed_in_a_row = 0 if summary["held"] else failed_in_a_row + 1
            print(f"[{name}] {row(name, summary)}", flush=True)
    except Exception as exc:  # noqa: BLE001 - report what was measured so far
        result["failure"] = f"{type(exc).__name__}: {exc}"
        print(f"[{name}] FAILED: {result['failure']}\n{server.log()}", flush=True)
    finally:
        server.stop()
        result["server_exit_code"] = server.exit_code  # after SIGTERM; negative: killed by that signal
        result["processes_left_killed"] = server.leftovers
        if server.leftovers:
            print(f"[{name}] warning: killed {len(server.leftovers)} process(es) left after the stop", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--ks", default="1,8,16,24,32,40", help="concurrent sessions to try, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of audio each client streams per K")
    parser.add_argument("--out", default="bench/out", help="folder for results.json, the plot and server logs")
    parser.add_argument("--modes", default=",".join(MODES), help="engines, comma-separated (serial: the baseline)")
    parser.add_argument(
        "--max-sessions",
        default="",
        help="REALTIME_MAX_SESSIONS values of the batched engine, comma-separated (default: the largest K); "
        "larger than the largest K shows an over-sized batch",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="web worker counts of the batched engine, comma-separated: 1 = a bare daphne, "
        "N >= 2 = deploy/supervisord.conf with REALTIME_WEB_WORKERS=N",
    )
    parser.add_argument(
        "--serial-ks", default="", help="K values of the serial baseline (default: --ks); its batch is the largest"
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="skip a configuration's larger Ks after this many Ks in a row not held (0: run every K)",
    )
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
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for migrate + model load")
    parser.add_argument("--audio-dir", default=str(DEFAULT_AUDIO), help="folder with the test speech (tests/audio)")
    parser.add_argument(
        "--anchors",
        action="store_true",
        help="a non-acting server_vad instead of turn_detection: null, whose speech events anchor the latency "
        "matching (the server then runs Silero VAD for every session, which the held rule excludes)",
    )
    args = parser.parse_args()
    try:
        ks = int_list(args.ks)
        serial_ks = int_list(args.serial_ks) if args.serial_ks.strip() else ks
        max_sessions = int_list(args.max_sessions)
        workers = int_list(args.workers)
    except ValueError:
        parser.error("--ks, --serial-ks, --max-sessions and --workers take comma-separated integers")
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if (
        not ks
        or min(ks) < 1
        or not serial_ks
        or min(serial_ks) < 1
        or not workers
        or min(workers) < 1
        or any(mode not in MODES for mode in modes)
        or any(value < max(ks) for value in max_sessions)
    ):
        parser.error(
            f"--ks needs positive integers, --modes a subset of {MODES}, --workers positive counts, "
            "--max-sessions values at least the largest K"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    audio_dir = Path(args.audio_dir)
    audio = load_audio(audio_dir)
    started = time.monotonic()
    configs = configurations(modes, workers, max_sessions, ks, serial_ks)
    results: dict[str, Any] = {
        "machine": machine_info(audio_dir),
        "config": {
            "ks": ks,
            "serial_ks": serial_ks if "serial" in modes else None,
            "seconds": args.seconds,
            "drain_s": args.drain,
            "warmup_s": args.warmup,
            "warmup_sessions": args.warmup_sessions or max(ks),
            "max_sessions": max_sessions or [max(ks)],
            "workers": workers,
            "model": args.model or "demo checkpoint",
            "modes": modes,
            "configurations": [config["name"] for config in configs],
            "frame_ms": FRAME_S * 1000,
            "held_rule": {
                "audio_back_ratio_min": HOLD_AUDIO_RATIO,
                "gap_max_ms": HOLD_MAX_GAP_S * 1000,
                "window": "deltas arrived by the last frame's send + 400 ms",
            },
            "latency_check_bound_ms": REAL_TIME_BOUND_S * 1000,
            "growth_rule": "p95(last quarter) < 1.5 * p95(first quarter) + 40 ms",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "turn_detection": ANCHOR_TURN_DETECTION if args.anchors else None,
        },
        "runs": {},
    }
    print(header(), flush=True)
    for config in configs:
        results["runs"][config["name"]] = bench_configuration(config, args, audio, out)
        device = results["runs"][config["name"]].get("healthz", {}).get("device")
        results["device"] = device or results.get("device")
    results["machine"]["device"] = results.get("device")

    largest: dict[str, int | None] = {}
    for name, run in results["runs"].items():
        held = [s["k"] for s in run["ks"] if s.get("held")]
        largest[name] = max(held) if held else None
    results["largest_k_held"] = largest
    batched = max((k or 0 for name, k in largest.items() if name.startswith("batched")), default=0)
    serial = max((k or 0 for name, k in largest.items() if name.startswith("serial")), default=0)
    results["ratio_batched_over_serial"] = round(batched / serial, 2) if batched and serial else None
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    write_results(results, out)
    print_report(results, out)
    return 0
