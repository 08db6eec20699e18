"""bench/summary.py and bench/report.py: percentiles, one K's verdict, the tables, the files; and
the entry point's command line.

No server and no model: client runs and scrapes are made up here. Times are multiples of 1/64 s
(exact in binary floating point), so every figure is asserted exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cli import TITLE
from bench.clients import ClientRun
from bench.report import header, print_report, row, write_results
from bench.summary import ms, pct, summarise

REPO = Path(__file__).resolve().parent.parent
INF = math.inf

# --- pct: numpy's percentile, linear between closest ranks -------------------------------------


def test_pct_of_nothing() -> None:
    assert pct([], 50) is None
    assert pct([], 95) is None


def test_pct_of_one_value() -> None:
    for q in (0, 50, 95, 99, 100):
        assert pct([0.25], q) == 0.25


def test_pct_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert pct(values, 0) == 1.0
    assert pct(values, 25) == 1.75  # rank 0.75
    assert pct(values, 50) == 2.5  # rank 1.5
    assert pct(values, 100) == 4.0
    assert pct([1.0, 2.0, 3.0, 4.0, 5.0], 95) == 4.8  # rank 3.8


def test_pct_ignores_order_and_keeps_ties() -> None:
    assert pct([7.0, 2.0, 2.0, 2.0], 50) == 2.0  # rank 1.5, between two equal values
    assert pct([7.0, 2.0, 2.0, 2.0], 75) == 3.25  # rank 2.25: a quarter of the way from 2 to 7
    assert pct([0.5, 0.5, 0.5], 99) == 0.5


def test_pct_returns_a_plain_float() -> None:
    assert type(pct([1.0, 2.0], 50)) is float


def test_ms() -> None:
    assert ms(None) is None
    assert ms(0.0625) == 62.5
    assert ms(0.0123456) == 12.35  # rounded to 0.01 ms
    assert ms(0.0) == 0.0


# --- summarise: one K ---------------------------------------------------------------------------

PERIOD = 0.125


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def steady_run(index: int = 0) -> ClientRun:
    """Eight frames 1/8 s apart, frame n + 1 answered 1/16 s after it was sent, all on time."""
    run = ClientRun(index=index, audio_file="weather_en_24k.wav", offset_s=0.0, phase_s=0.0, frames_planned=8)
    run.send_s = [n * PERIOD for n in range(8)]
    run.lag_s = [0.0, 0.0, 0.00390625, 0.0, 0.0, 0.0, 0.0, 0.0]
    run.delta_s = [run.send_s[n + 1] + 0.0625 for n in range(7)]
    run.response_create_s = 0.03125
    return run


# The server's side of the run: 4 model steps, 7 frame latencies, scraped before and after.
AFTER = {
    ("realtime_model_step_seconds_bucket", labels(le="0.03125", model_type="sft")): 0.0,
    ("realtime_model_step_seconds_bucket", labels(le="0.0625", model_type="sft")): 4.0,
    ("realtime_model_step_seconds_bucket", labels(le="+Inf", model_type="sft")): 4.0,
    ("realtime_model_step_seconds_sum", labels(model_type="sft")): 0.25,
    ("realtime_model_step_seconds_count", labels(model_type="sft")): 4.0,
    ("realtime_frame_latency_seconds_bucket", labels(le="0.125")): 7.0,
    ("realtime_frame_latency_seconds_bucket", labels(le="+Inf")): 7.0,
    ("realtime_frame_latency_seconds_sum", ()): 0.4375,
    ("realtime_frame_latency_seconds_count", ()): 7.0,
    ("realtime_errors_total", labels(code="input_audio_buffer_overflow")): 2.0,
}
BEFORE = {("realtime_errors_total", labels(code="input_audio_buffer_overflow")): 2.0}
CPU = {"wall_s": 1.0, "server_cpu_percent": 50.0}


def test_summarise_a_k_held_in_real_time() -> None:
    s = summarise([steady_run()], BEFORE, AFTER, CPU, anchored=True)
    assert (s["k"], s["held_real_time"], s["reasons"]) == (1, True, [])
    assert s["ttfa_p50_ms"] == s["ttfa_max_ms"] == 187.5  # first delta at 3/16 s
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms", "latency_mean_ms"):
        assert s[key] == 62.5
    assert s["latency_first_quarter_p95_ms"] == s["latency_last_quarter_p95_ms"] == 62.5
    assert (s["frames_answered"], s["frames_unanswered"], s["silence_steps_during_stream"]) == (7, 0, 0)
    assert (s["naive_latency_p50_ms"], s["naive_latency_negative_fraction"]) == (62.5, 0.0)
    # theta: mean step (1/16 s) + mean overhead (none scraped) - 2 sigma (too few gaps: 0).
    assert (s["match_theta_ms"], s["tick_to_delta_mean_ms"], s["tick_to_delta_sigma_ms"]) == (62.5, 62.5, 0.0)
    assert (s["anchors_used"], s["anchors_dropped"]) == (0, 0)  # no speech events came
    assert (s["server_frames_observed"], s["client_minus_server_mean_latency_ms"]) == (7.0, 0.0)
    assert (s["overflow_errors"], s["other_errors"], s["client_failures"]) == (0, 0, 0)
    assert (s["client_send_lag_max_ms"], s["cpu"]) == (3.91, CPU)
    server = s["server"]
    assert (server["steps"], server["step_p50_ms"], server["step_mean_ms"]) == (4.0, 46.88, 62.5)
    assert server["real_time_factor_p50"] == 0.586  # 46.875 ms / 80 ms
    assert server["overhead_p50_ms"] is None and server["overhead_mean_ms"] is None
    assert server["frame_latency_count"] == 7.0 and server["frame_latency_mean_ms"] == 62.5
    assert server["loop_stall_bucket_hit_ms"] is None and server["loop_stall_max_lifetime_ms"] is None
    assert server["errors_total_delta"] == {} and server["dropped_output_frames_delta"] == 0.0
    (client,) = s["clients"]
    assert client["latency_ms"] == [None] + [62.5] * 7
    assert client["send_ms"] == [125.0 * n for n in range(8)]
    assert client["delta_ms"] == [187.5 + 125.0 * n for n in range(7)]
    assert (client["frames_sent"], client["deltas"], client["deltas_before_first_append"]) == (8, 7, 0)
    assert (client["response_create_ms"], client["ttfa_ms"], client["latency_p95_ms"]) == (31.25, 187.5, 62.5)
    assert (client["silence_before"], client["silence_during"], client["silence_after"]) == (0, 0, 0)


def test_summarise_lists_every_reason_a_k_was_not_held() -> None:
    late = steady_run(0)
    late.frames_planned = 10  # two frames never sent
    latency = [0.0625, 0.0625, 0.0625, 0.0625, 0.3125, 0.3125]  # frames 1..6; frame 7 never answered
    late.delta_s = [late.send_s[n + 1] + latency[n] for n in range(6)]
    late.errors = [
        {"t": 0.5, "code": "input_audio_buffer_overflow", "type": "invalid_request_error", "message": "full"},
        {"t": 0.75, "code": "other", "type": "server_error", "message": "?"},
    ]
    refused = ClientRun(index=1, audio_file="train_fr_24k.wav", offset_s=0.0, phase_s=0.0625, frames_planned=10)
    refused.failure = "OSError: refused"
    s = summarise([late, refused], {}, {}, CPU, anchored=False)
    assert s["reasons"] == [
        "1 client(s) failed",
        "1 overflow error(s)",
        "1 other error(s)",
        "13 frame(s) unanswered",  # frame 7, the two never sent, the other client's ten
        "p95 312.5 ms >= 240 ms",
        "latency grows: last-quarter p95 312.5 ms vs first-quarter 62.5 ms",
    ]
    assert s["held_real_time"] is False and s["k"] == 2
    assert s["clients"][0]["latency_ms"] == [None, 62.5, 62.5, 62.5, 62.5, 312.5, 312.5, None]
    assert s["clients"][0]["errors"][0]["t"] == 500.0  # ms after the first append
    assert s["clients"][1]["frames_sent"] == 0 and s["clients"][1]["ttfa_ms"] is None
    assert s["ttfa_p50_ms"] == 187.5  # the client with no delta adds no TTFA
    assert s["server"]["step_p50_ms"] is None and s["server"]["real_time_factor_p50"] is None


def test_summarise_of_no_clients() -> None:
    s = summarise([], {}, {}, CPU, anchored=True)
    assert s["reasons"] == [
        "p95 None ms >= 240 ms",
        "latency grows: last-quarter p95 None ms vs first-quarter None ms",
    ]
    assert (s["k"], s["frames_answered"], s["latency_p50_ms"], s["clients"]) == (0, 0, None, [])


# --- the table ----------------------------------------------------------------------------------


def summary(**changed: Any) -> dict[str, Any]:
    s = {
        "k": 8,
        "held_real_time": True,
        "reasons": [],
        "ttfa_p50_ms": 124.0,
        "latency_p50_ms": 94.0,
        "latency_p95_ms": 132.5,
        "latency_p99_ms": 134.0,
        "frames_answered": 100,
        "server_frames_observed": 100.0,
        "anchors_used": 12,
        "anchors_dropped": 1,
        "silence_steps_during_stream": 0,
        "client_minus_server_mean_latency_ms": 3.25,
        "client_send_lag_max_ms": 1.5,
        "server": {
            "step_p50_ms": 50.0,
            "real_time_factor_p50": 0.6,
            "overhead_p50_ms": 1.75,
            "loop_stall_bucket_hit_ms": [5.0, 10.0],
            "loop_stall_max_lifetime_ms": 12.5,
            "frame_latency_p95_ms": 120.0,
        },
        "cpu": {"server_cpu_percent": 87.4, "bench_client_cpu_percent": 10.0, "other_processes_cpu_percent": 2.5},
        "clients": [],
    }
    return {**s, **changed}


def test_header() -> None:
    assert header() == (
        "    mode    K  TTFA p50  lat p50  lat p95  lat p99  step p50    RTF  ovh p50  stall K  stall life"
        "  srv p95  cpu srv  real time"
    )


def test_row() -> None:
    assert row("batched", summary()) == (
        " batched    8     124.0     94.0    132.5    134.0      50.0   0.60     1.75     <=10        12.5"
        "    120.0      87%        yes"
    )
    assert len(row("batched", summary())) == len(header())


def test_row_without_figures() -> None:
    s = summary(held_real_time=False, ttfa_p50_ms=None, latency_p50_ms=None, latency_p95_ms=None)
    s.update(latency_p99_ms=None, server={}, cpu={"server_cpu_percent": None})
    assert row("serial", s) == "  ".join(
        cell.rjust(width)
        for cell, width in zip(
            ("serial", "8", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "no"),
            (8, 3, 8, 7, 7, 7, 8, 5, 7, 7, 10, 7, 7, 9),
            strict=True,
        )
    )
    del s["cpu"]
    assert row("serial", s).endswith("        -         no")


# --- the closing report and the files ---------------------------------------------------------


def results() -> dict[str, Any]:
    slow = summary(k=4, held_real_time=False, reasons=["p95 300.0 ms >= 240 ms", "1 overflow error(s)"])
    return {
        "machine": {"cpu_count": 2, "torch": "2.x"},
        "config": {"seconds": 8.0},
        "device": "cpu",
        "runs": {
            "batched": {"ks": [summary(), {"k": 16, "held_real_time": False, "reasons": ["server died"]}]},
            "serial": {"ks": [slow], "failure": "RuntimeError: boom"},
        },
        "largest_k_real_time": {"batched": 8, "serial": None},
        "ratio_batched_over_serial": None,
        "elapsed_s": 12.4,
    }


def test_print_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = results()
    print_report(data, tmp_path)
    checks = "  cpu server 87.4% bench 10.0% others 2.5%"
    assert capsys.readouterr().out.splitlines() == [
        "",
        "Frame latency = client send -> delta of the step that consumed the frame; all times in ms.",
        header(),
        row("batched", summary()),
        " batched   16  server died",
        row("serial", data["runs"]["serial"]["ks"][0]),
        "",
        "Checks: frames answered (client) vs frame latencies observed (server), anchors used, steps on",
        "silence during the stream, client mean latency minus server mean, client send lag, CPU use.",
        "   batched K=8   answered 100/100  anchors 12 (dropped 1)  silence steps 0  client-server mean 3.2 ms"
        "  send lag max 1.5 ms" + checks,
        "    serial K=4   answered 100/100  anchors 12 (dropped 1)  silence steps 0  client-server mean 3.2 ms"
        "  send lag max 1.5 ms" + checks,
        "",
        "  batched K=16: not real time: server died",
        "  serial K=4: not real time: p95 300.0 ms >= 240 ms; 1 overflow error(s)",
        "  serial: run failed: RuntimeError: boom",
        "largest K held in real time, batched: 8",
        "largest K held in real time, serial: none",
        "ratio batched/serial: n/a",
        f"wrote {tmp_path / 'results.json'} and {tmp_path / 'latency_vs_k.png'} in 12s",
    ]


def test_print_report_of_one_mode_has_no_ratio(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = results()
    del data["runs"]["serial"]
    data["largest_k_real_time"] = {"batched": 8}
    print_report(data, tmp_path)
    out = capsys.readouterr().out
    assert "largest K held in real time, batched: 8\n" in out
    assert "ratio" not in out


def test_write_results(tmp_path: Path) -> None:
    data = results()
    write_results(data, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == data
    assert (tmp_path / "latency_vs_k.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# --- the entry point ----------------------------------------------------------------------------


def test_entry_point_docstring_starts_with_the_help_title() -> None:
    from bench import cli, realtime_bench

    assert realtime_bench.__doc__.splitlines()[0] == TITLE
    assert realtime_bench.main is cli.main


def test_entry_point_runs_as_a_script_from_anywhere(tmp_path: Path) -> None:
    script = str(REPO / "bench" / "realtime_bench.py")
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert TITLE in " ".join(done.stdout.split())
    for flag in ("--ks", "--seconds", "--out", "--modes", "--drain", "--warmup", "--warmup-sessions", "--no-anchors"):
        assert flag in done.stdout
    done = subprocess.run(
        [sys.executable, script, "--ks", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert "--ks needs positive integers, --modes a subset of ('batched', 'serial')" in done.stderr
