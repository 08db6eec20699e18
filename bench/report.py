"""What a run leaves behind: the tables on stdout, ``results.json`` and ``latency_vs_k.png``.

Everything here reads the results dict the command line assembles (one summary per configuration
and K, from ``bench.summary``, plus the machine and the run's settings) and only formats it: one
table row per K as it finishes, and at the end a table per configuration, the server's step time
against the batch width, the checks of the matching and the CPU, the reasons a K was not held,
the same figures as a Markdown table ready for the README, the largest K each configuration held,
``results.json`` (every raw figure, per client, plus the machine) and the plot of the worst gap
and of the model step against K. A figure the server did not export prints as "n/a".
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
from bench.summary import HOLD_MAX_GAP_S

REPO = Path(__file__).resolve().parent.parent

COLUMNS = (
    ("configuration", 20),
    ("K", 3),
    ("held", 5),
    ("audio%", 6),
    ("gap", 5),
    ("lat p50", 7),
    ("lat p95", 7),
    ("step p50", 8),
    ("mean", 5),
    ("ovh p50", 7),
    ("stall", 5),
    ("cpu srv", 7),
    ("cpu gen", 7),
    ("cpu all", 7),
    ("K held", 6),
)

MARKDOWN_COLUMNS = (
    "configuration",
    "K",
    "held",
    "min audio %",
    "worst gap (ms)",
    "latency p50",
    "p95",
    "step p50",
    "step mean",
    "overhead p50",
    "worst loop stall",
    "server CPU %",
    "load gen CPU %",
    "others CPU %",
)

NA = "n/a"


def _fmt(value: float | None, digits: int = 1) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return NA if value is None else f"{value:.0f}%"


def _stall(s: dict[str, Any]) -> str:
    stall = s.get("server", {}).get("loop_stall_bucket_hit_ms")
    return f"<={stall[1]:g}" if stall else NA


def _held(s: dict[str, Any]) -> str:
    return f"{s['sessions_held']}/{s['k']}" if "sessions_held" in s else f"0/{s['k']}"


def cells(s: dict[str, Any]) -> list[str]:
    """One K's figures as text, in the order of the tables (after configuration and K)."""
    srv, cpu = s.get("server", {}), s.get("cpu", {})
    return [
        _held(s),
        _fmt(s.get("audio_back_min_percent"), 0),
        _fmt(s.get("gap_max_ms"), 0),
        _fmt(s.get("latency_p50_ms"), 0),
        _fmt(s.get("latency_p95_ms"), 0),
        _fmt(srv.get("step_p50_ms")),
        _fmt(srv.get("step_mean_ms")),
        _fmt(srv.get("overhead_p50_ms"), 2),
        _stall(s),
        _percent(cpu.get("server_cpu_percent")),
        _percent(cpu.get("bench_client_cpu_percent")),
        _percent(cpu.get("machine_cpu_percent")),
    ]


def row(name: str, s: dict[str, Any]) -> str:
    values = (name, str(s["k"]), *cells(s), "yes" if s.get("held") else "no")
    return "  ".join(cell.rjust(width) for cell, (_, width) in zip(values, COLUMNS, strict=True))


def header() -> str:
    return "  ".join(name.rjust(width) for name, width in COLUMNS)


def markdown_table(results: dict[str, Any]) -> list[str]:
    """The README's table: one row per configuration and K, times in ms, CPU in % of one core
    (others: every process on the machine but the server and the load generator -- a K measured
    while something else took a core is not the server's figure)."""
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for name, run in results["runs"].items():
        for s in run["ks"]:
            if "server" in s:
                others = _percent(s.get("cpu", {}).get("other_processes_cpu_percent"))
                values = [name, str(s["k"]), *cells(s)[:-1], others]
                values[2] = f"**{values[2]}**" if s.get("held") else values[2]
            else:
                values = [name, str(s["k"]), "; ".join(s.get("reasons", [])), *[NA] * (len(MARKDOWN_COLUMNS) - 3)]
            lines.append("| " + " | ".join(v.replace("<=", "≤") for v in values) + " |")
    return lines


def rows_of(run: dict[str, Any], k: int, device: str | None) -> int | None:
    """The batch width a step of K sessions has, if the server does not say: on the CPU the
    resizing engine's state is the live sessions rounded up to 8 rows (REALTIME_RESIZE_STEP=0),
    at most REALTIME_MAX_SESSIONS; the serial engine steps one session at a time."""
    if run.get("engine") == "serial":
        return 1
    if device not in (None, "cpu"):
        return run.get("max_sessions")
    return min(run.get("max_sessions") or k, -(-k // 8) * 8)


def width_of(run: dict[str, Any], s: dict[str, Any], device: str | None) -> str:
    """The batch width of a K's steps: the engine's own gauge halfway through the run, else the
    estimate of :func:`rows_of` (marked ~); the serial engine's steps are one row wide."""
    rows = s.get("server", {}).get("rows_mid_run")
    if rows is not None and run.get("engine") != "serial":  # serial: batch-1 engines, whatever the gauge sums
        return f"{rows:.0f}"
    estimate = rows_of(run, s["k"], device)
    return NA if estimate is None else f"~{estimate}"


def step_vs_batch(results: dict[str, Any]) -> list[str]:
    """Server step time p50 against the batch width, per configuration and K."""
    lines = []
    for name, run in results["runs"].items():
        for s in run["ks"]:
            srv = s.get("server")
            if not srv:
                continue
            by_label = srv.get("step_by_label") or {}
            labelled = "  ".join(f"{key}: {_fmt(value.get('p50_ms'))}" for key, value in by_label.items())
            lines.append(
                f"  {name:>20} K={s['k']:<3} rows {width_of(run, s, results.get('device'))!s:<4}"
                f" step p50 {_fmt(srv.get('step_p50_ms'))} p95 {_fmt(srv.get('step_p95_ms'))}"
                f" mean {_fmt(srv.get('step_mean_ms'))} ms over {srv.get('steps', 0):.0f} steps"
                + (f"  by label: {labelled}" if labelled else "")
            )
    return lines


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
    """Left: the lowest share of audio back and the worst gap against K; right: the server's model
    step and per-frame overhead. One line per configuration; a K not held is circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gap_ax, step_ax) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first = True
    for index, (name, run) in enumerate(results["runs"].items()):
        rows = [s for s in run["ks"] if s.get("gap_max_ms") is not None]
        color = "tab:red" if run.get("engine") == "serial" else colors[index % len(colors)]
        if rows:
            gap_ax.plot([s["k"] for s in rows], [s["gap_max_ms"] for s in rows], "-o", color=color, label=name)
            failed = [s for s in rows if not s.get("held")]
            if failed:
                gap_ax.scatter(
                    [s["k"] for s in failed],
                    [s["gap_max_ms"] for s in failed],
                    s=140,
                    facecolors="none",
                    edgecolors="black",
                    linewidths=1.2,
                    zorder=5,
                    label="K not held (circled)" if first else None,
                )
                first = False
        steps = [s for s in run["ks"] if s.get("server", {}).get("step_p50_ms") is not None]
        if steps:
            step_ax.plot(
                [s["k"] for s in steps],
                [s["server"]["step_p50_ms"] for s in steps],
                "-o",
                color=color,
                label=f"{name} step",
            )
        overheads = [s for s in run["ks"] if s.get("server", {}).get("overhead_p50_ms") is not None]
        if overheads:
            step_ax.plot(
                [s["k"] for s in overheads],
                [s["server"]["overhead_p50_ms"] for s in overheads],
                ":",
                color=color,
                label=f"{name} overhead",
            )
    for ax, bound_ms, bound_label, ylabel, title in (
        (
            gap_ax,
            HOLD_MAX_GAP_S * 1000,
            "held: no gap over 400 ms",
            "worst gap between audio deltas (ms)",
            "Worst gap vs concurrent sessions",
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
        ax.legend(fontsize=7)
    all_ks = sorted({s["k"] for run in results["runs"].values() for s in run["ks"]})
    for ax in (gap_ax, step_ax):
        if all_ks:
            ax.set_xticks(all_ks, [str(k) for k in all_ks])
    machine = results["machine"]
    fig.suptitle(
        f"Moshi {results['config'].get('model', 'demo checkpoint')} on {machine['cpu_count']} CPU(s), torch "
        f"{machine['torch']}, device {results.get('device', '?')}; {results['config']['seconds']:g} s of speech "
        "per client",
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
    """The closing report on stdout: the tables, the checks, the verdicts and what was written."""
    largest: dict[str, int | None] = results["largest_k_held"]
    print()
    print(
        "held = sessions held of K (>= 90% of the audio back by the last frame + 400 ms, no gap over 400 ms, "
        "no error); audio% = the lowest session's, gap = the worst; latency = client send -> delta of the step "
        "that consumed the frame; times in ms; server p50s are interpolated in /metrics' buckets (20/40/60/80 ms "
        "for the step: its mean is exact); CPU in % of one core (gen = the load generator, all = the machine)."
    )
    for name, run in results["runs"].items():
        print()
        print(header())
        for summary in run["ks"]:
            if "server" in summary:
                print(row(name, summary))
            else:
                print(f"{name:>20}  {summary['k']:>3}  {'; '.join(summary['reasons'])}")
    print()
    print(
        "Step time vs batch (server's realtime_model_step_seconds over each K; rows = the engine's state width"
        " halfway through, ~ = estimated):"
    )
    lines = step_vs_batch(results)
    print("\n".join(lines) if lines else "  n/a")
    print()
    print("Checks: frames answered (client) vs frame latencies observed (server), steps on silence during")
    print("the stream, client mean latency minus server mean, client send lag, CPU use, processes.")
    for name, run in results["runs"].items():
        for s in run["ks"]:
            if "server" not in s:
                continue
            cpu = s.get("cpu", {})
            print(
                f"  {name:>20} K={s['k']:<3} answered {s['frames_answered']}/{s['server_frames_observed']:.0f}"
                f"  silence steps {s['silence_steps_during_stream']}"
                f"  client-server mean {_fmt(s['client_minus_server_mean_latency_ms'])} ms"
                f"  send lag max {_fmt(s['client_send_lag_max_ms'])} ms"
                f"  cpu server {_percent(cpu.get('server_cpu_percent'))} ({cpu.get('server_processes', NA)} proc)"
                f" gen {_percent(cpu.get('bench_client_cpu_percent'))}"
                f" others {_percent(cpu.get('other_processes_cpu_percent'))}"
            )
    print()
    for name, run in results["runs"].items():
        for summary in run["ks"]:
            if summary["reasons"]:
                print(f"  {name} K={summary['k']}: not held: {'; '.join(summary['reasons'])}")
            if summary.get("latency_checks"):
                print(f"  {name} K={summary['k']}: latency check: {'; '.join(summary['latency_checks'])}")
        if run.get("failure"):
            print(f"  {name}: run failed: {run['failure']}")
    print()
    print("Markdown (README):")
    print()
    print("\n".join(markdown_table(results)))
    print()
    for name, k in largest.items():
        print(f"largest K held, {name}: {k if k is not None else 'none'}")
    ratio = results.get("ratio_batched_over_serial")
    if any(name.startswith("serial") for name in largest) and any(name.startswith("batched") for name in largest):
        print(f"ratio batched/serial: {ratio if ratio is not None else NA}")
    print(f"wrote {out / 'results.json'} and {out / 'latency_vs_k.png'} in {results['elapsed_s']:.0f}s")
