"""One K summarised: the client and server figures of a run, and whether its sessions were held.

The clients' recordings give the held rule and, through the matching (``bench.matching``), the
per-frame latencies; the two ``/metrics`` scrapes go through ``bench.scraping`` to give the
server's step time, overhead, frame latency and event-loop stalls over the run. This module
combines them into the one dict per K that ``results.json`` keeps and the report prints.

**The held rule** (issue 13): a client keeps one response open for the whole run and streams
speech in real time as 80 ms appends with turn detection off, so the model answers every frame.
A session is **held** when

* at least 90% of its audio comes back: the samples of the audio deltas that arrived by the time
  its last frame was sent plus 400 ms, over the samples it was to send (``frames_planned`` x
  1920; the steps on silence an open response also gets count as audio back, so a healthy
  session is at 100% or a little more -- the per-K minimum is capped at 100% -- and one the
  server keeps waiting falls below),
* no gap between two consecutive audio deltas (from the first one to the end of that window)
  exceeds 400 ms,
* and it saw no error event and did not fail (refused, closed early, timed out).

A K is held when every one of its K sessions is held and the server refused none. The frame
latency percentiles (and the old verdict: p95 under 240 ms and no growth through the run) are
reported beside it, not part of the verdict: without the speech-event anchors
(``--anchors``) the matching is by threshold only and can put a frame one tick off.

Client-side percentiles (:func:`pct`) are numpy's, linear between the closest ranks, over the raw
latencies; server-side ones are estimated from histogram buckets (``scraping.histogram_quantile``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.clients import ClientRun
from bench.frames import FRAME_S, FRAME_SAMPLES
from bench.matching import anchors_of, match_deltas, step_time_sigma, vad_window_frames
from bench.scraping import (
    Samples,
    counter_delta_by,
    engine_histogram_delta,
    highest_bucket_hit,
    histogram_delta,
    histogram_label_values,
    histogram_quantile,
    max_of,
    value_of,
)

HOLD_AUDIO_RATIO = 0.9  # at least 90% of a session's audio comes back ...
HOLD_MAX_GAP_S = 0.400  # ... and no gap between audio deltas exceeds 400 ms
REAL_TIME_BOUND_S = 0.240  # the latency check: 80 ms frame + 80 ms acoustic delay + one 80 ms tick
GROWTH_FACTOR, GROWTH_SLACK_S = 1.5, 0.040
STEP_METRIC = "realtime_model_step_seconds"


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)


def session_hold(run: ClientRun) -> dict[str, Any]:
    """The held rule for one session: audio back, worst gap between deltas, and why it was not held."""
    planned = run.frames_planned * FRAME_SAMPLES
    window_end = run.send_s[-1] + HOLD_MAX_GAP_S if run.send_s else None
    times, received = [], 0
    for t, samples in zip(run.delta_s, run.delta_samples, strict=False):
        if window_end is not None and t <= window_end:
            times.append(t)
            received += samples
    ratio = received / planned if planned else None
    gap = float(max(np.diff(times))) if len(times) >= 2 else None
    reasons = []
    if run.failure is not None:
        reasons.append("failed")
    if run.errors:
        reasons.append(f"{len(run.errors)} error(s)")
    if ratio is None or ratio < HOLD_AUDIO_RATIO:
        reasons.append(f"audio back {0.0 if ratio is None else 100 * ratio:.0f}% < {100 * HOLD_AUDIO_RATIO:.0f}%")
    if gap is None or gap > HOLD_MAX_GAP_S:
        reasons.append(f"gap {'n/a' if gap is None else f'{gap * 1000:.0f} ms'} > {HOLD_MAX_GAP_S * 1000:.0f} ms")
    return {
        "held": not reasons,
        "audio_samples_planned": planned,
        "audio_samples_back": received,
        "audio_back_ratio": None if ratio is None else round(ratio, 4),
        "gap_max_ms": ms(gap),
        "hold_reasons": reasons,
    }


def step_by_label(before: Samples, after: Samples) -> dict[str, dict[str, float | None]]:
    """Step p50 per value of any label of the step histogram besides ``model_type`` (a batch width,
    if the server labels its steps with one): {"label=value": {"steps": n, "p50_ms": ...}}."""
    out: dict[str, dict[str, float | None]] = {}
    for label, values in sorted(histogram_label_values(after, STEP_METRIC, ignore=("model_type",)).items()):
        for value in sorted(values, key=lambda v: (len(v), v)):
            delta = engine_histogram_delta(before, after, STEP_METRIC, **{label: value})
            if delta["count"]:
                out[f"{label}={value}"] = {
                    "steps": delta["count"],
                    "p50_ms": ms(histogram_quantile(0.5, delta["buckets"])),
                    "mean_ms": ms(delta["mean"]),
                }
    return out


def summarise(
    runs: list[ClientRun], before: Samples, after: Samples, cpu: dict[str, Any], anchored: bool = False
) -> dict[str, Any]:
    step = engine_histogram_delta(before, after, STEP_METRIC, model_type="sft")
    if not step["count"]:  # an engine that labels its steps otherwise (or not at all)
        step = engine_histogram_delta(before, after, STEP_METRIC)
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
    window_frames = vad_window_frames(max((len(run.send_s) for run in runs), default=0)) if anchored else []
    for run in runs:
        hold = session_hold(run)
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
        # silence (a tick with no client frame queued); kept as a check, see bench/matching.py.
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
                **hold,
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
                "delta_samples": list(run.delta_samples),
                "response_create_ms": ms(run.response_create_s - t0) if run.response_create_s else None,
                "errors": [{**error, "t": round((error["t"] - t0) * 1000, 2)} for error in run.errors],
                "speech_events": run.speech_events,
                "event_counts": run.event_counts,
                "failure": run.failure,
                "closed_by_server": run.closed_by_server,
            }
        )

    refused = counter_delta_by(before, after, "realtime_sessions_refused_total", "code")
    held_sessions = sum(client["held"] for client in clients)
    reasons = []
    if held_sessions < len(runs):
        reasons.append(f"{len(runs) - held_sessions} of {len(runs)} session(s) not held")
    if failures:
        reasons.append(f"{failures} client(s) failed")
    if overflow:
        reasons.append(f"{overflow} overflow error(s)")
    if other_errors:
        reasons.append(f"{other_errors} other error(s)")
    if refused:
        reasons.append(f"{sum(refused.values()):.0f} session(s) refused by the server")
    if not runs:
        reasons.append("no sessions")
    ratios = [client["audio_back_ratio"] for client in clients]
    gaps = [client["gap_max_ms"] for client in clients]

    p95 = pct(all_latencies, 95)
    p95_first, p95_last = pct(first_quarter, 95), pct(last_quarter, 95)
    latency_checks = []
    if unanswered:
        latency_checks.append(f"{unanswered} frame(s) unanswered")
    if p95 is None or p95 >= REAL_TIME_BOUND_S:
        latency_checks.append(f"p95 {ms(p95)} ms >= {REAL_TIME_BOUND_S * 1000:.0f} ms")
    if p95_first is None or p95_last is None or p95_last >= GROWTH_FACTOR * p95_first + GROWTH_SLACK_S:
        latency_checks.append(f"latency grows: last-quarter p95 {ms(p95_last)} ms vs first-quarter {ms(p95_first)} ms")
    step_p50 = histogram_quantile(0.5, step["buckets"])
    stall_hit = highest_bucket_hit(stall["buckets"])
    silence_during = sum(client["silence_during"] for client in clients)
    anchors_used = sum(client["anchors"] for client in clients)
    anchors_dropped = sum(client["anchors_dropped"] for client in clients)
    return {
        "k": len(runs),
        "held": not reasons,
        "sessions_held": held_sessions,
        "reasons": reasons,
        # Capped at 100%: an open response also gets steps on silence, whose audio is not the client's.
        "audio_back_min_percent": round(100 * min(min(r, 1.0) for r in ratios if r is not None), 1)
        if any(r is not None for r in ratios)
        else None,
        "gap_max_ms": max(g for g in gaps if g is not None) if any(g is not None for g in gaps) else None,
        "latency_checks": latency_checks,
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
            "step_by_label": step_by_label(before, after),
            "real_time_factor_p50": round(step_p50 / FRAME_S, 3) if step_p50 is not None else None,
            "real_time_factor_gauge_last": max_of(after, "realtime_real_time_factor"),
            "overhead_p50_ms": ms(histogram_quantile(0.5, overhead["buckets"])),
            "overhead_p95_ms": ms(histogram_quantile(0.95, overhead["buckets"])),
            "overhead_mean_ms": ms(overhead["mean"]),
            "frame_latency_count": server_latency["count"],
            "frame_latency_p50_ms": ms(histogram_quantile(0.5, server_latency["buckets"])),
            "frame_latency_p95_ms": ms(histogram_quantile(0.95, server_latency["buckets"])),
            "frame_latency_mean_ms": ms(server_latency["mean"]),
            "loop_stall_max_lifetime_ms": ms(max_of(after, "realtime_event_loop_stall_max_seconds")),
            "loop_stall_bucket_hit_ms": [ms(stall_hit[0]), ms(stall_hit[1])] if stall_hit else None,
            "loop_stall_samples": stall["count"],
            "loop_stall_mean_ms": ms(stall["mean"]),
            "errors_total_delta": counter_delta_by(before, after, "realtime_errors_total", "code"),
            "sessions_refused_delta": refused,
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
