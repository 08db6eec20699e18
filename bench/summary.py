"""One K summarised: the client and server figures of a run, and whether it held in real time.

The clients' recordings go through the matching (``bench.matching``) to give per-frame latencies,
the two ``/metrics`` scrapes through ``bench.scraping`` to give the server's step time, overhead,
frame latency and event-loop stalls over the run; this module combines them into the one dict per
K that ``results.json`` keeps and the report prints, with the reasons K was *not* held in real
time, if any.

A K is **held in real time** when no client saw an overflow error (or any other error, or a failed
connection), every frame was answered, the p95 frame latency over all clients is under 240 ms
(80 ms frame + 80 ms acoustic delay + one tick of scheduling), and latency does not grow through
the run: p95 of the last quarter of the frames < 1.5 x p95 of the first quarter + 40 ms.

Client-side percentiles (:func:`pct`) are numpy's, linear between the closest ranks, over the raw
latencies; server-side ones are estimated from histogram buckets (``scraping.histogram_quantile``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.clients import ClientRun
from bench.frames import FRAME_S
from bench.matching import anchors_of, match_deltas, step_time_sigma, vad_window_frames
from bench.scraping import (
    Samples,
    counter_delta_by,
    highest_bucket_hit,
    histogram_delta,
    histogram_quantile,
    value_of,
)

REAL_TIME_BOUND_S = 0.240  # 80 ms frame + 80 ms acoustic delay + one 80 ms tick of scheduling
GROWTH_FACTOR, GROWTH_SLACK_S = 1.5, 0.040


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)


def summarise(
    runs: list[ClientRun], before: Samples, after: Samples, cpu: dict[str, float], anchored: bool
) -> dict[str, Any]:
    step = histogram_delta(before, after, "realtime_model_step_seconds", model_type="sft")
    overhead = histogram_delta(before, after, "realtime_frame_overhead_seconds")
    server_latency = histogram_delta(before, after, "realtime_frame_latency_seconds")
    stall = histogram_delta(before, after, "realtime_event_loop_stall_seconds")
    # Time from a tick to its delta leaving the server: what separates "this delta answers the
    # oldest unanswered frame" from "this delta came from a step on silence". Its mean is exact
    # (histogram sums); a legitimate delta can come sooner than the mean, so go 2 sigma below it,
    # sigma from the spread of the gaps between deltas (one step per tick: gap = 80 ms + the
    # difference of two step times).
    tick_to_delta_mean = (step["mean"] or 0.0) + (overhead["mean"] or 0.0)
    tick_to_delta_sigma = step_time_sigma(runs)
    theta = max(0.0, tick_to_delta_mean - 2 * tick_to_delta_sigma)

    clients, all_latencies, first_quarter, last_quarter, ttfas, lags = [], [], [], [], [], []
    naive_all: list[float] = []
    unanswered = overflow = other_errors = failures = 0
    window_frames = vad_window_frames(max((len(run.send_s) for run in runs), default=0))
    for run in runs:
        anchors = anchors_of(run, window_frames) if anchored else []
        latencies, counts = match_deltas(run.send_s, run.delta_s, theta, anchors)
        answered = [value for value in latencies[1:] if value is not None]
        missing = sum(value is None for value in latencies[1:])
        quarter = max(1, len(latencies) // 4)
        first_quarter += [value for value in latencies[1:quarter] if value is not None]
        last_quarter += [value for value in latencies[-quarter:] if value is not None]
        all_latencies += answered
        unanswered += missing + (run.frames_planned - len(run.send_s))
        # The plain mapping, the n-th delta answers frame n+1: it holds until the server steps on
        # silence (a tick with no client frame queued); kept as a check, see the docstring.
        naive = [run.delta_s[n] - run.send_s[n + 1] for n in range(min(len(run.delta_s), len(run.send_s) - 1))]
        naive_all += naive
        ttfa = next((d - run.send_s[0] for d in run.delta_s if run.send_s and d >= run.send_s[0]), None)
        if ttfa is not None:
            ttfas.append(ttfa)
        lags += run.lag_s
        codes = [error["code"] for error in run.errors]
        overflow += codes.count("input_audio_buffer_overflow")
        other_errors += len(codes) - codes.count("input_audio_buffer_overflow")
        failures += run.failure is not None
        t0 = run.send_s[0] if run.send_s else (run.response_create_s or 0.0)
        clients.append(
            {
                "index": run.index,
                "audio_file": run.audio_file,
                "offset_s": run.offset_s,
                "phase_ms": round(run.phase_s * 1000, 2),
                "frames_planned": run.frames_planned,
                "frames_sent": len(run.send_s),
                "deltas": len(run.delta_s),
                "deltas_before_first_append": sum(d < t0 for d in run.delta_s),
                "frames_answered": len(answered),
                "frames_unanswered": missing,
                **counts,
                "ttfa_ms": ms(ttfa),
                "latency_ms": [ms(value) for value in latencies],
                "latency_p50_ms": ms(pct(answered, 50)),
                "latency_p95_ms": ms(pct(answered, 95)),
                "naive_latency_p50_ms": ms(pct(naive, 50)),
                "send_lag_max_ms": ms(max(run.lag_s) if run.lag_s else None),
                "send_ms": [round((t - t0) * 1000, 2) for t in run.send_s],
                "delta_ms": [round((t - t0) * 1000, 2) for t in run.delta_s],
                "response_create_ms": ms(run.response_create_s - t0) if run.response_create_s else None,
                "errors": [{**error, "t": round((error["t"] - t0) * 1000, 2)} for error in run.errors],
                "speech_events": run.speech_events,
                "event_counts": run.event_counts,
                "failure": run.failure,
                "closed_by_server": run.closed_by_server,
            }
        )

    p95 = pct(all_latencies, 95)
    p95_first, p95_last = pct(first_quarter, 95), pct(last_quarter, 95)
    reasons = []
    if failures:
        reasons.append(f"{failures} client(s) failed")
    if overflow:
        reasons.append(f"{overflow} overflow error(s)")
    if other_errors:
        reasons.append(f"{other_errors} other error(s)")
    if unanswered:
        reasons.append(f"{unanswered} frame(s) unanswered")
    if p95 is None or p95 >= REAL_TIME_BOUND_S:
        reasons.append(f"p95 {ms(p95)} ms >= {REAL_TIME_BOUND_S * 1000:.0f} ms")
    if p95_first is None or p95_last is None or p95_last >= GROWTH_FACTOR * p95_first + GROWTH_SLACK_S:
        reasons.append(f"latency grows: last-quarter p95 {ms(p95_last)} ms vs first-quarter {ms(p95_first)} ms")
    step_p50 = histogram_quantile(0.5, step["buckets"])
    stall_hit = highest_bucket_hit(stall["buckets"])
    silence_during = sum(client["silence_during"] for client in clients)
    anchors_used = sum(client["anchors"] for client in clients)
    anchors_dropped = sum(client["anchors_dropped"] for client in clients)
    return {
        "k": len(runs),
        "held_real_time": not reasons,
        "reasons": reasons,
        "ttfa_p50_ms": ms(pct(ttfas, 50)),
        "ttfa_max_ms": ms(max(ttfas) if ttfas else None),
        "latency_p50_ms": ms(pct(all_latencies, 50)),
        "latency_p95_ms": ms(p95),
        "latency_p99_ms": ms(pct(all_latencies, 99)),
        "latency_max_ms": ms(max(all_latencies) if all_latencies else None),
        "latency_mean_ms": ms(float(np.mean(all_latencies)) if all_latencies else None),
        "latency_first_quarter_p95_ms": ms(p95_first),
        "latency_last_quarter_p95_ms": ms(p95_last),
        "frames_answered": len(all_latencies),
        "frames_unanswered": unanswered,
        "silence_steps_during_stream": silence_during,
        "naive_latency_p50_ms": ms(pct(naive_all, 50)),
        "naive_latency_negative_fraction": round(sum(v < 0 for v in naive_all) / len(naive_all), 3)
        if naive_all
        else None,
        "match_theta_ms": ms(theta),
        "anchors_used": anchors_used,
        "anchors_dropped": anchors_dropped,
        "tick_to_delta_mean_ms": ms(tick_to_delta_mean),
        "tick_to_delta_sigma_ms": ms(tick_to_delta_sigma),
        # Checks of the matching: the server observes one frame latency per client frame whose step
        # had output (all but each client's frame 0), and its mean lacks only the loopback transport.
        "server_frames_observed": server_latency["count"],
        "client_minus_server_mean_latency_ms": ms(float(np.mean(all_latencies)) - server_latency["mean"])
        if all_latencies and server_latency["mean"] is not None
        else None,
        "overflow_errors": overflow,
        "other_errors": other_errors,
        "client_failures": failures,
        "client_send_lag_p99_ms": ms(pct(lags, 99)),
        "client_send_lag_max_ms": ms(max(lags) if lags else None),
        "server": {
            "steps": step["count"],
            "step_p50_ms": ms(step_p50),
            "step_p95_ms": ms(histogram_quantile(0.95, step["buckets"])),
            "step_mean_ms": ms(step["mean"]),
            "real_time_factor_p50": round(step_p50 / FRAME_S, 3) if step_p50 is not None else None,
            "real_time_factor_gauge_last": value_of(after, "realtime_real_time_factor", model_type="sft"),
            "overhead_p50_ms": ms(histogram_quantile(0.5, overhead["buckets"])),
            "overhead_p95_ms": ms(histogram_quantile(0.95, overhead["buckets"])),
            "overhead_mean_ms": ms(overhead["mean"]),
            "frame_latency_count": server_latency["count"],
            "frame_latency_p50_ms": ms(histogram_quantile(0.5, server_latency["buckets"])),
            "frame_latency_p95_ms": ms(histogram_quantile(0.95, server_latency["buckets"])),
            "frame_latency_mean_ms": ms(server_latency["mean"]),
            "loop_stall_max_lifetime_ms": ms(value_of(after, "realtime_event_loop_stall_max_seconds")),
            "loop_stall_bucket_hit_ms": [ms(stall_hit[0]), ms(stall_hit[1])] if stall_hit else None,
            "loop_stall_samples": stall["count"],
            "loop_stall_mean_ms": ms(stall["mean"]),
            "errors_total_delta": counter_delta_by(before, after, "realtime_errors_total", "code"),
            "sessions_refused_delta": counter_delta_by(before, after, "realtime_sessions_refused_total", "code"),
            "dropped_output_frames_delta": (value_of(after, "realtime_dropped_output_frames_total") or 0.0)
            - (value_of(before, "realtime_dropped_output_frames_total") or 0.0),
            "histograms": {
                "model_step_seconds": step,
                "frame_overhead_seconds": overhead,
                "frame_latency_seconds": server_latency,
                "event_loop_stall_seconds": stall,
            },
        },
        "cpu": cpu,
        "clients": clients,
    }
