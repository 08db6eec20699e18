"""What a run leaves behind: the tables on stdout, ``results.json`` and ``latency_vs_k.png``.

Everything here reads the results dict the command line assembles (one summary per mode and K,
from ``bench.summary``, plus the machine and the configuration) and only formats it: one table
row per K as it finishes, and at the end the whole table again, the checks of the matching, the
reasons a K was not held in real time, the largest K each engine held, ``results.json`` (every
raw figure, per client, plus the machine) and the plot of latency and model step time against K.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.frames import FRAME_S
from bench.summary import REAL_TIME_BOUND_S

REPO = Path(__file__).resolve().parent.parent

COLUMNS = (
    ("mode", 8),
    ("K", 3),
    ("TTFA p50", 8),
    ("lat p50", 7),
    ("lat p95", 7),
    ("lat p99", 7),
    ("step p50", 8),
    ("RTF", 5),
    ("ovh p50", 7),
    ("stall K", 7),
    ("stall life", 10),
    ("srv p95", 7),
    ("cpu srv", 7),
    ("real time", 9),
)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(mode: str, s: dict[str, Any]) -> str:
    srv = s.get("server", {})
    stall = srv.get("loop_stall_bucket_hit_ms")
    cells = (
        mode,
        str(s["k"]),
        _fmt(s.get("ttfa_p50_ms")),
        _fmt(s.get("latency_p50_ms")),
        _fmt(s.get("latency_p95_ms")),
        _fmt(s.get("latency_p99_ms")),
        _fmt(srv.get("step_p50_ms")),
        _fmt(srv.get("real_time_factor_p50"), 2),
        _fmt(srv.get("overhead_p50_ms"), 2),
        f"<={stall[1]:g}" if stall else "-",
        _fmt(srv.get("loop_stall_max_lifetime_ms")),
        _fmt(srv.get("frame_latency_p95_ms")),
        f"{s['cpu']['server_cpu_percent']:.0f}%" if s.get("cpu", {}).get("server_cpu_percent") is not None else "-",
        "yes" if s["held_real_time"] else "no",
    )
    return "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def header() -> str:
    return "  ".join(name.rjust(width) for name, width in COLUMNS)


def machine_info(audio_dir: Path) -> dict[str, Any]:
    from importlib.metadata import version

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    git = {}
    with contextlib.suppress(Exception):
        git["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()
        git["uncommitted"] = [line for line in status if line.strip()]
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "moshi": version("moshi"),
        "openai": version("openai"),
        "daphne": version("daphne"),
        "audio_dir": str(audio_dir),
        "git": git,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency_ax, step_ax) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = {"batched": "tab:blue", "serial": "tab:red"}
    for mode, run in results["runs"].items():
        rows = [s for s in run["ks"] if s.get("latency_p50_ms") is not None]
        if not rows:
            continue
        ks = [s["k"] for s in rows]
        color = colors.get(mode, None)
        latency_ax.plot(ks, [s["latency_p50_ms"] for s in rows], "-o", color=color, label=f"{mode} p50")
        latency_ax.plot(ks, [s["latency_p95_ms"] for s in rows], "--s", color=color, label=f"{mode} p95")
        failed = [s for s in rows if not s["held_real_time"]]
        if failed:
            latency_ax.scatter(
                [s["k"] for s in failed],
                [s["latency_p95_ms"] for s in failed],
                s=140,
                facecolors="none",
                edgecolors="black",
                linewidths=1.2,
                zorder=5,
                label="not real time (circled)" if mode == next(iter(results["runs"])) else None,
            )
        steps = [s for s in rows if s["server"].get("step_p50_ms") is not None]
        step_ax.plot(
            [s["k"] for s in steps],
            [s["server"]["step_p50_ms"] for s in steps],
            "-o",
            color=color,
            label=f"{mode} model step p50",
        )
        step_ax.plot(
            [s["k"] for s in steps],
            [s["server"]["overhead_p50_ms"] or float("nan") for s in steps],
            ":",
            color=color,
            label=f"{mode} server overhead p50",
        )
    for ax, bound_ms, bound_label, ylabel, title in (
        (
            latency_ax,
            REAL_TIME_BOUND_S * 1000,
            "real-time bound (240 ms)",
            "frame latency, client side (ms)",
            "Frame latency vs concurrent sessions",
        ),
        (step_ax, FRAME_S * 1000, "80 ms frame (RTF 1)", "ms", "Server: model step and per-frame overhead (p50)"),
    ):
        ax.axhline(bound_ms, color="gray", linestyle="-.", label=bound_label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent sessions K")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in (latency_ax, step_ax):
        all_ks = sorted({s["k"] for run in results["runs"].values() for s in run["ks"]})
        if all_ks:
            ax.set_xticks(all_ks, [str(k) for k in all_ks])
    machine = results["machine"]
    fig.suptitle(
        f"Moshi demo checkpoint on {machine['cpu_count']} CPU(s), torch {machine['torch']}, device "
        f"{results.get('device', '?')}; {results['config']['seconds']:g} s of speech per client",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: dict[str, Any], out: Path) -> None:
    """``<out>/results.json`` and ``<out>/latency_vs_k.png``."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "latency_vs_k.png")


def print_report(results: dict[str, Any], out: Path) -> None:
    """The closing report on stdout: the table, the checks, the verdicts and what was written."""
    largest: dict[str, int | None] = results["largest_k_real_time"]
    print()
    print("Frame latency = client send -> delta of the step that consumed the frame; all times in ms.")
    print(header())
    for mode, run in results["runs"].items():
        for summary in run["ks"]:
            if "server" in summary:
                print(row(mode, summary))
            else:
                print(f"{mode:>8}  {summary['k']:>3}  {'; '.join(summary['reasons'])}")
    print()
    print("Checks: frames answered (client) vs frame latencies observed (server), anchors used, steps on")
    print("silence during the stream, client mean latency minus server mean, client send lag, CPU use.")
    for mode, run in results["runs"].items():
        for s in run["ks"]:
            if "server" not in s:
                continue
            print(
                f"  {mode:>8} K={s['k']:<3} answered {s['frames_answered']}/{s['server_frames_observed']:.0f}"
                f"  anchors {s['anchors_used']} (dropped {s['anchors_dropped']})"
                f"  silence steps {s['silence_steps_during_stream']}"
                f"  client-server mean {_fmt(s['client_minus_server_mean_latency_ms'])} ms"
                f"  send lag max {_fmt(s['client_send_lag_max_ms'])} ms"
                f"  cpu server {s['cpu']['server_cpu_percent']}% bench {s['cpu']['bench_client_cpu_percent']}%"
                f" others {s['cpu']['other_processes_cpu_percent']}%"
            )
    print()
    for mode, run in results["runs"].items():
        for summary in run["ks"]:
            if summary["reasons"]:
                print(f"  {mode} K={summary['k']}: not real time: {'; '.join(summary['reasons'])}")
        if run.get("failure"):
            print(f"  {mode}: run failed: {run['failure']}")
    for mode, k in largest.items():
        print(f"largest K held in real time, {mode}: {k if k is not None else 'none'}")
    if "batched" in largest and "serial" in largest:
        ratio = results["ratio_batched_over_serial"]
        print(f"ratio batched/serial: {ratio if ratio is not None else 'n/a'}")
    print(f"wrote {out / 'results.json'} and {out / 'latency_vs_k.png'} in {results['elapsed_s']:.0f}s")
