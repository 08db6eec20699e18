"""bench/summary.py and bench/report.py: percentiles, the held rule, one K's verdict, the tables, the
files; and the entry point's command line and configurations.

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

from bench.cli import TITLE, configurations, cpu_percent, int_list
from bench.clients import ClientRun, base64_samples
from bench.report import header, markdown_table, print_report, row, rows_of, step_vs_batch, write_results
from bench.summary import HOLD_AUDIO_RATIO, HOLD_MAX_GAP_S, ms, pct, session_hold, step_by_label, summarise

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


# --- the held rule: one session ------------------------------------------------------------------

PERIOD = 0.125
SAMPLES = 1920


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def steady_run(index: int = 0) -> ClientRun:
    """Eight frames 1/8 s apart, frame n + 1 answered 1/16 s after it was sent, then one step on
    silence: eight deltas of one frame each, all of the audio back, every gap 1/8 s."""
    run = ClientRun(index=index, audio_file="weather_en_24k.wav", offset_s=0.0, phase_s=0.0, frames_planned=8)
    run.send_s = [n * PERIOD for n in range(8)]
    run.lag_s = [0.0, 0.0, 0.00390625, 0.0, 0.0, 0.0, 0.0, 0.0]
    run.delta_s = [run.send_s[n + 1] + 0.0625 for n in range(7)] + [run.send_s[7] + 0.0625 + PERIOD]
    run.delta_samples = [SAMPLES] * 8
    run.response_create_s = 0.03125
    return run


def test_the_rule_is_the_issues() -> None:
    assert (HOLD_AUDIO_RATIO, HOLD_MAX_GAP_S) == (0.9, 0.4)


def test_base64_samples() -> None:
    import base64

    for size in (0, 2, 4, 6, 3840):
        assert base64_samples(base64.b64encode(bytes(size)).decode()) == size // 2


def test_a_steady_session_is_held() -> None:
    assert session_hold(steady_run()) == {
        "held": True,
        "audio_samples_planned": 8 * SAMPLES,
        "audio_samples_back": 8 * SAMPLES,
        "audio_back_ratio": 1.0,
        "gap_max_ms": 125.0,
        "hold_reasons": [],
    }


def test_audio_back_below_ninety_percent_is_not_held() -> None:
    run = steady_run()
    run.delta_s, run.delta_samples = run.delta_s[:7], run.delta_samples[:7]  # 7 of 8 frames: 87.5%
    hold = session_hold(run)
    assert (hold["held"], hold["audio_back_ratio"], hold["hold_reasons"]) == (False, 0.875, ["audio back 88% < 90%"])
    run.delta_samples = [SAMPLES * 2] * 7  # longer deltas count by their samples: 175%
    assert session_hold(run)["held"] and session_hold(run)["audio_back_ratio"] == 1.75


def test_audio_after_the_last_frame_plus_400_ms_does_not_count() -> None:
    run = steady_run()
    late = run.send_s[-1] + 0.40625  # 1/64 s past the window
    run.delta_s = [*run.delta_s[:6], late, late + 0.0625]
    hold = session_hold(run)
    assert hold["audio_samples_back"] == 6 * SAMPLES and hold["audio_back_ratio"] == 0.75
    run.delta_s[6] = run.send_s[-1] + 0.375  # inside the window
    assert session_hold(run)["audio_samples_back"] == 7 * SAMPLES


def test_a_gap_over_400_ms_is_not_held() -> None:
    run = steady_run()
    run.send_s = [n * PERIOD for n in range(8)]
    run.delta_s = [0.1875, 0.3125, 0.4375, 0.84375, 0.96875, 1.03125, 1.09375, 1.15625]  # 406.25 ms hole
    hold = session_hold(run)
    assert (hold["held"], hold["gap_max_ms"], hold["hold_reasons"]) == (False, 406.25, ["gap 406 ms > 400 ms"])
    run.delta_s[3] = 0.8125  # 375 ms: within the rule
    assert session_hold(run)["held"] and session_hold(run)["gap_max_ms"] == 375.0


def test_the_wait_for_the_first_delta_is_not_a_gap() -> None:
    run = steady_run()
    run.delta_s = [t + 0.5 for t in run.delta_s[:-1]]  # the first arrives 625 ms after frame 1 was sent
    run.delta_samples = [SAMPLES] * 7 + [0]
    run.send_s[-1] = 1.125  # the window (to 1.525 s) is long enough for all
    hold = session_hold(run)
    assert hold["gap_max_ms"] == 125.0 and hold["hold_reasons"] == ["audio back 88% < 90%"]


def test_a_failed_or_erroring_session_is_not_held() -> None:
    run = steady_run()
    run.failure = "OSError: refused"
    run.errors = [{"t": 0.5, "code": "input_audio_buffer_overflow", "type": "invalid_request_error", "message": ""}]
    assert session_hold(run)["hold_reasons"] == ["failed", "1 error(s)"]


def test_a_session_with_no_audio_back() -> None:
    run = ClientRun(index=0, audio_file="x.wav", offset_s=0.0, phase_s=0.0, frames_planned=4)
    run.failure = "ConnectionRefusedError: no"
    assert session_hold(run) == {
        "held": False,
        "audio_samples_planned": 4 * SAMPLES,
        "audio_samples_back": 0,
        "audio_back_ratio": 0.0,
        "gap_max_ms": None,
        "hold_reasons": ["failed", "audio back 0% < 90%", "gap n/a > 400 ms"],
    }
    run.send_s, run.delta_s, run.delta_samples, run.failure = [0.0], [0.0625], [4 * SAMPLES], None
    assert session_hold(run)["hold_reasons"] == ["gap n/a > 400 ms"]  # one delta: no gap measured
    run.frames_planned = 0
    assert session_hold(run)["audio_back_ratio"] is None


# --- summarise: one K ---------------------------------------------------------------------------

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
    ("realtime_event_loop_stall_seconds_bucket", labels(le="0.0625")): 3.0,
    ("realtime_event_loop_stall_seconds_bucket", labels(le="0.125")): 4.0,
    ("realtime_event_loop_stall_seconds_bucket", labels(le="+Inf")): 4.0,
    ("realtime_event_loop_stall_seconds_sum", ()): 0.25,
    ("realtime_event_loop_stall_seconds_count", ()): 4.0,
    ("realtime_event_loop_stall_max_seconds", ()): 0.5,
    ("realtime_errors_total", labels(code="input_audio_buffer_overflow")): 2.0,
}
BEFORE = {("realtime_errors_total", labels(code="input_audio_buffer_overflow")): 2.0}
CPU = {"wall_s": 1.0, "server_cpu_percent": 50.0}


def test_summarise_a_k_held() -> None:
    s = summarise([steady_run(0), steady_run(1)], BEFORE, AFTER, CPU)
    assert (s["k"], s["held"], s["sessions_held"], s["reasons"]) == (2, True, 2, [])
    assert (s["audio_back_min_percent"], s["gap_max_ms"]) == (100.0, 125.0)
    assert s["latency_checks"] == []
    assert s["ttfa_p50_ms"] == s["ttfa_max_ms"] == 187.5  # first delta at 3/16 s
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms", "latency_mean_ms"):
        assert s[key] == 62.5
    assert (s["frames_answered"], s["frames_unanswered"], s["silence_steps_during_stream"]) == (14, 0, 0)
    # theta: mean step (1/16 s) + mean overhead (none scraped) - 2 sigma (too few gaps: 0).
    assert (s["match_theta_ms"], s["tick_to_delta_mean_ms"], s["tick_to_delta_sigma_ms"]) == (62.5, 62.5, 0.0)
    assert (s["overflow_errors"], s["other_errors"], s["client_failures"]) == (0, 0, 0)
    assert (s["client_send_lag_max_ms"], s["cpu"]) == (3.91, CPU)
    server = s["server"]
    assert (server["steps"], server["step_p50_ms"], server["step_mean_ms"]) == (4.0, 46.88, 62.5)
    assert server["real_time_factor_p50"] == 0.586  # 46.875 ms / 80 ms
    assert server["overhead_p50_ms"] is None and server["overhead_mean_ms"] is None
    assert server["frame_latency_count"] == 7.0 and server["frame_latency_mean_ms"] == 62.5
    assert server["loop_stall_bucket_hit_ms"] == [62.5, 125.0] and server["loop_stall_max_lifetime_ms"] == 500.0
    assert server["errors_total_delta"] == {} and server["sessions_refused_delta"] == {}
    assert server["step_by_label"] == {}
    client = s["clients"][0]
    assert (client["held"], client["audio_back_ratio"], client["gap_max_ms"]) == (True, 1.0, 125.0)
    assert client["latency_ms"] == [None] + [62.5] * 7
    assert client["delta_samples"] == [SAMPLES] * 8
    assert (client["silence_before"], client["silence_during"], client["silence_after"]) == (0, 0, 1)


def test_summarise_lists_every_reason_a_k_was_not_held() -> None:
    late = steady_run(0)
    late.frames_planned = 10  # two frames never sent: 8 of 10 frames back, 80%
    late.errors = [
        {"t": 0.5, "code": "input_audio_buffer_overflow", "type": "invalid_request_error", "message": "full"},
        {"t": 0.75, "code": "other", "type": "server_error", "message": "?"},
    ]
    refused = ClientRun(index=1, audio_file="train_fr_24k.wav", offset_s=0.0, phase_s=0.0625, frames_planned=10)
    refused.failure = "OSError: refused"
    after = {("realtime_sessions_refused_total", labels(code="busy")): 1.0}
    s = summarise([late, refused, steady_run(2)], {}, after, CPU, anchored=False)
    assert s["reasons"] == [
        "2 of 3 session(s) not held",
        "1 client(s) failed",
        "1 overflow error(s)",
        "1 other error(s)",
        "1 session(s) refused by the server",
    ]
    assert (s["held"], s["sessions_held"], s["k"]) == (False, 1, 3)
    assert (s["audio_back_min_percent"], s["gap_max_ms"]) == (0.0, 125.0)
    assert s["clients"][0]["hold_reasons"] == ["2 error(s)", "audio back 80% < 90%"]
    assert s["latency_checks"] == ["12 frame(s) unanswered"]  # the two never sent, the other client's ten
    assert s["server"]["step_p50_ms"] is None and s["server"]["real_time_factor_p50"] is None
    assert s["server"]["loop_stall_bucket_hit_ms"] is None and s["server"]["loop_stall_max_lifetime_ms"] is None


def test_summarise_keeps_the_latency_checks_apart_from_the_verdict() -> None:
    slow = steady_run()
    latency = [0.0625, 0.0625, 0.0625, 0.0625, 0.3125, 0.3125, 0.3125]
    slow.delta_s = [slow.send_s[n + 1] + latency[n] for n in range(7)] + [slow.send_s[7] + 0.375]
    s = summarise([slow], {}, {}, CPU)
    assert s["held"] and s["reasons"] == []
    assert s["latency_checks"] == [
        "p95 312.5 ms >= 240 ms",
        "latency grows: last-quarter p95 312.5 ms vs first-quarter 62.5 ms",
    ]


def test_summarise_of_no_clients() -> None:
    s = summarise([], {}, {}, CPU)
    assert (s["held"], s["reasons"], s["k"], s["sessions_held"]) == (False, ["no sessions"], 0, 0)
    assert (s["audio_back_min_percent"], s["gap_max_ms"], s["latency_p50_ms"], s["clients"]) == (None, None, None, [])


def test_summarise_takes_a_step_histogram_without_model_type() -> None:
    after = {
        ("realtime_model_step_seconds_bucket", labels(le="0.0625")): 2.0,
        ("realtime_model_step_seconds_bucket", labels(le="+Inf")): 2.0,
        ("realtime_model_step_seconds_sum", ()): 0.0625,
        ("realtime_model_step_seconds_count", ()): 2.0,
    }
    server = summarise([steady_run()], {}, after, CPU)["server"]
    assert (server["steps"], server["step_mean_ms"]) == (2.0, 31.25)


def test_step_by_label() -> None:
    after = {
        ("realtime_model_step_seconds_bucket", labels(le="0.0625", model_type="sft", rows="8")): 2.0,
        ("realtime_model_step_seconds_bucket", labels(le="+Inf", model_type="sft", rows="8")): 2.0,
        ("realtime_model_step_seconds_sum", labels(model_type="sft", rows="8")): 0.0625,
        ("realtime_model_step_seconds_count", labels(model_type="sft", rows="8")): 2.0,
        ("realtime_model_step_seconds_bucket", labels(le="0.0625", model_type="sft", rows="16")): 0.0,
        ("realtime_model_step_seconds_bucket", labels(le="+Inf", model_type="sft", rows="16")): 0.0,
    }
    assert step_by_label({}, after) == {"rows=8": {"steps": 2.0, "p50_ms": 31.25, "mean_ms": 31.25}}
    assert step_by_label({}, {}) == {}


# --- the tables ---------------------------------------------------------------------------------


def summary(**changed: Any) -> dict[str, Any]:
    s = {
        "k": 8,
        "held": True,
        "sessions_held": 8,
        "reasons": [],
        "latency_checks": [],
        "audio_back_min_percent": 99.2,
        "gap_max_ms": 161.5,
        "ttfa_p50_ms": 124.0,
        "latency_p50_ms": 94.0,
        "latency_p95_ms": 132.5,
        "latency_p99_ms": 134.0,
        "frames_answered": 100,
        "server_frames_observed": 100.0,
        "silence_steps_during_stream": 0,
        "client_minus_server_mean_latency_ms": 3.25,
        "client_send_lag_max_ms": 1.5,
        "server": {
            "steps": 100.0,
            "step_p50_ms": 50.0,
            "step_p95_ms": 60.0,
            "step_mean_ms": 51.0,
            "overhead_p50_ms": 1.75,
            "loop_stall_bucket_hit_ms": [5.0, 10.0],
            "loop_stall_max_lifetime_ms": 12.5,
        },
        "cpu": {
            "server_cpu_percent": 87.4,
            "server_processes": 2,
            "bench_client_cpu_percent": 10.0,
            "machine_cpu_percent": 99.6,
            "other_processes_cpu_percent": 2.5,
        },
        "clients": [],
    }
    return {**s, **changed}


def test_header() -> None:
    assert header() == (
        "       configuration    K   held  audio%    gap  lat p50  lat p95  step p50   mean  ovh p50  stall"
        "  cpu srv  cpu gen  cpu all  K held"
    )


def test_row() -> None:
    assert row("batched w1 max8", summary()) == (
        "     batched w1 max8    8    8/8      99    162       94      132      50.0   51.0     1.75   <=10"
        "      87%      10%     100%     yes"
    )
    assert len(row("batched w1 max8", summary())) == len(header())


def test_row_without_figures() -> None:
    s = summary(held=False, sessions_held=3, audio_back_min_percent=None, gap_max_ms=None, latency_p50_ms=None)
    s.update(latency_p95_ms=None, server={}, cpu={"server_cpu_percent": None})
    assert row("serial w1 max8", s) == "  ".join(
        cell.rjust(width)
        for cell, width in zip(
            (
                "serial w1 max8",
                "8",
                "3/8",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "no",
            ),
            (20, 3, 5, 6, 5, 7, 7, 8, 5, 7, 5, 7, 7, 7, 6),
            strict=True,
        )
    )
    del s["cpu"], s["sessions_held"]
    assert row("serial w1 max8", s).split()[4:] == ["0/8"] + ["n/a"] * 11 + ["no"]


def results() -> dict[str, Any]:
    slow = summary(k=4, held=False, sessions_held=2, reasons=["2 of 4 session(s) not held", "1 overflow error(s)"])
    slow["latency_checks"] = ["p95 300.0 ms >= 240 ms"]
    return {
        "machine": {"cpu_count": 2, "torch": "2.x"},
        "config": {"seconds": 8.0},
        "device": "cpu",
        "runs": {
            "batched w1 max16": {
                "engine": "batched",
                "workers": 1,
                "max_sessions": 16,
                "ks": [summary(), {"k": 16, "held": False, "reasons": ["server died"], "clients": []}],
            },
            "serial w1 max4": {"engine": "serial", "workers": 1, "max_sessions": 4, "ks": [slow], "failure": "boom"},
        },
        "largest_k_held": {"batched w1 max16": 8, "serial w1 max4": None},
        "ratio_batched_over_serial": None,
        "elapsed_s": 12.4,
    }


def test_markdown_table() -> None:
    assert markdown_table(results()) == [
        "| configuration | K | held | min audio % | worst gap (ms) | latency p50 | p95 | step p50 | step mean"
        " | overhead p50 | worst loop stall | server CPU % | load gen CPU % | others CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| batched w1 max16 | 8 | **8/8** | 99 | 162 | 94 | 132 | 50.0 | 51.0 | 1.75 | ≤10 | 87% | 10% | 2% |",
        "| batched w1 max16 | 16 | server died | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |",
        "| serial w1 max4 | 4 | 2/4 | 99 | 162 | 94 | 132 | 50.0 | 51.0 | 1.75 | ≤10 | 87% | 10% | 2% |",
    ]


def test_rows_of() -> None:
    batched = {"engine": "batched", "max_sessions": 64}
    assert [rows_of(batched, k, "cpu") for k in (1, 8, 9, 40, 64)] == [8, 8, 16, 40, 64]
    assert rows_of({"engine": "batched", "max_sessions": 12}, 12, "cpu") == 12
    assert rows_of(batched, 1, "cuda") == 64  # a fixed full-width state on CUDA
    assert rows_of({"engine": "serial", "max_sessions": 4}, 4, "cpu") == 1


def test_step_vs_batch() -> None:
    data = results()
    data["runs"]["batched w1 max16"]["ks"][0]["server"]["step_by_label"] = {"rows=8": {"p50_ms": 48.0}}
    data["runs"]["serial w1 max4"]["ks"][0]["server"]["rows_mid_run"] = 4.0  # its pool's rows, summed
    data["runs"]["batched w1 max16"]["ks"][0]["server"]["rows_mid_run"] = 8.0
    assert step_vs_batch(data) == [
        "      batched w1 max16 K=8   rows 8    step p50 50.0 p95 60.0 mean 51.0 ms over 100 steps"
        "  by label: rows=8: 48.0",
        "        serial w1 max4 K=4   rows ~1   step p50 50.0 p95 60.0 mean 51.0 ms over 100 steps",
    ]


# --- the closing report and the files ---------------------------------------------------------


def test_print_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = results()
    print_report(data, tmp_path)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert row("batched w1 max16", summary()) in lines
    assert "    batched w1 max16   16  server died" in lines
    assert row("serial w1 max4", data["runs"]["serial w1 max4"]["ks"][0]) in lines
    assert "  serial w1 max4 K=4: not held: 2 of 4 session(s) not held; 1 overflow error(s)" in lines
    assert "  serial w1 max4 K=4: latency check: p95 300.0 ms >= 240 ms" in lines
    assert "  serial w1 max4: run failed: boom" in lines
    assert "  batched w1 max16 K=16: not held: server died" in lines
    assert any(line.startswith("      batched w1 max16 K=8   answered 100/100") for line in lines)
    table = markdown_table(data)
    start = lines.index(table[0])
    assert lines[start : start + len(table)] == table
    assert lines[-4:] == [
        "largest K held, batched w1 max16: 8",
        "largest K held, serial w1 max4: none",
        "ratio batched/serial: n/a",
        f"wrote {tmp_path / 'results.json'} and {tmp_path / 'latency_vs_k.png'} in 12s",
    ]


def test_print_report_of_one_engine_has_no_ratio(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = results()
    del data["runs"]["serial w1 max4"]
    data["largest_k_held"] = {"batched w1 max16": 8}
    print_report(data, tmp_path)
    out = capsys.readouterr().out
    assert "largest K held, batched w1 max16: 8\n" in out
    assert "ratio batched/serial" not in out


def test_write_results(tmp_path: Path) -> None:
    data = results()
    write_results(data, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == data
    assert (tmp_path / "latency_vs_k.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# --- the command line ---------------------------------------------------------------------------


def test_int_list() -> None:
    assert int_list("40, 8,8,,64") == [8, 40, 64]
    assert int_list("") == []
    with pytest.raises(ValueError):
        int_list("8,x")


def test_cpu_percent() -> None:
    assert cpu_percent(1.0, 2.5, 2.0) == 75.0
    assert cpu_percent(None, 2.5, 2.0) is None and cpu_percent(1.0, None, 2.0) is None
    assert cpu_percent(1.0, 2.0, 0.0) is None


def test_configurations() -> None:
    configs = configurations(["batched", "serial"], [1, 2], [40, 64], [1, 8, 32], [1, 2, 4])
    assert [(c["name"], c["engine"], c["workers"], c["max_sessions"], c["ks"]) for c in configs] == [
        ("batched w1 max40", "batched", 1, 40, [1, 8, 32]),
        ("batched w1 max64", "batched", 1, 64, [1, 8, 32]),
        ("batched w2 max40", "batched", 2, 40, [1, 8, 32]),
        ("batched w2 max64", "batched", 2, 64, [1, 8, 32]),
        ("serial w1 max4", "serial", 1, 4, [1, 2, 4]),
    ]
    # No --max-sessions: the largest K; no serial in the modes: no baseline.
    assert [c["name"] for c in configurations(["batched"], [1], [], [1, 16], [1])] == ["batched w1 max16"]
    assert [c["name"] for c in configurations(["serial"], [1, 2], [64], [1, 16], [1, 2])] == ["serial w1 max2"]


# --- the entry point ----------------------------------------------------------------------------


def test_entry_point_docstring_starts_with_the_help_title() -> None:
    from bench import cli, realtime_bench

    assert " ".join(realtime_bench.__doc__.split("\n\n")[0].split()) == TITLE
    assert realtime_bench.main is cli.main


def test_entry_point_runs_as_a_script_from_anywhere(tmp_path: Path) -> None:
    script = str(REPO / "bench" / "realtime_bench.py")
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert TITLE in " ".join(done.stdout.split())
    for flag in (
        "--ks",
        "--seconds",
        "--out",
        "--modes",
        "--max-sessions",
        "--workers",
        "--serial-ks",
        "--stop-after",
        "--drain",
        "--warmup",
        "--warmup-sessions",
        "--anchors",
    ):
        assert flag in done.stdout
    for bad in (["--ks", "0"], ["--workers", "0"], ["--ks", "1,8", "--max-sessions", "4"], ["--ks", "x"]):
        done = subprocess.run(
            [sys.executable, script, *bad], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 2, bad


def test_scrape_or_nothing() -> None:
    from bench.cli import scrape_or_nothing

    assert scrape_or_nothing(lambda url: {("up", ()): 1.0}, "http://x") == ({("up", ()): 1.0}, None)

    def failing(url: str) -> dict:
        raise RuntimeError("/metrics answered 503")

    assert scrape_or_nothing(failing, "http://x") == ({}, "RuntimeError: /metrics answered 503")
