"""Which audio delta answers which sent frame: the heart of the latency measure.

**Frame latency** is the arrival of the delta produced by the model step that consumed a frame,
minus the time that frame was sent. Each model step gives one output frame, except a fresh slot's
first step, which has none (the model's one-frame delay), so the n-th delta answers frame n+1 --
if frame 0 is what that first step consumed. That is why the client sends ``response.create``
right *behind* the first append: sent first, it lets the server step the slot on silence before
frame 0 arrives (a race, seen in practice). But while a response is open the server also steps a
slot on silence at any tick where none of its client's frames is queued (a frame that lands just
after a tick; an idle engine that wakes up also runs a few steps back to back), and those steps
produce deltas too, so "delta n answers frame n+1" does not hold for long. Nor can any timing
rule seen from the client tell "this frame waited one more tick" from "that delta came from a
step on silence" when a frame lands within the step-time jitter of a tick (tried: a threshold put
the mean 46 ms off in one run and 49 ms in another).

Hence the anchors, with ``--anchors`` (by default the clients send ``turn_detection: null``, as
the held rule wants, and only the threshold pass below matches): the clients then send a turn detection that never acts (``ANCHOR_TURN_DETECTION``:
``server_vad`` that neither creates nor cancels a response) but whose ``speech_started`` /
``speech_stopped`` events the server sends in the same batch as the audio delta of the step that
consumed the frame completing the VAD window where the event fired; that window is in the event
(``audio_start_ms`` with no prefix padding, ``audio_end_ms`` plus the silence duration) and which
frame completes it follows from the sizes alone (the server's soxr stream resampler, run here on
silence: :func:`vad_window_frames`). Between two anchors the deltas answer exactly the frames in
between and any surplus delta was a step on silence -- usually there is none and the matching is
exact; where there is one (and after the last anchor) a delta answers the oldest unanswered frame
if it was sent at least ``theta`` before the delta arrived, ``theta`` being the mean time from a
tick to its delta leaving the server (exact means of the step and overhead histograms) less twice
the spread of the step time (:func:`step_time_sigma`, from the jitter of the gaps between deltas).

The summary reports checks of this matching: per client the counts (deltas, anchors, steps on
silence before / during / after the stream), the plain "delta n answers frame n+1" figure, the
server's own count of frame latencies (it must equal the frames answered) and the client's mean
latency minus the server's exact mean of ``realtime_frame_latency_seconds`` (queued -> sent): the
client adds only loopback transport and both event loops' queueing, so a few ms, never near
+-80 ms.

Everything here is pure computation on the times a client recorded (no network, no model), so
it is unit-tested on its own (tests/test_bench_matching.py).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from bench.frames import FRAME_SAMPLES, SAMPLE_RATE

# Turn detection that never acts (no response created, none cancelled) but still sends
# speech_started / speech_stopped: the anchors of the delta <-> frame matching (see above).
VAD_WINDOW_MS, VAD_RATE, VAD_WINDOW_SAMPLES = 32, 16000, 512
ANCHOR_SILENCE_MS = 64  # short: an event at almost every pause between words, so anchors are dense
ANCHOR_TURN_DETECTION = {
    "type": "server_vad",
    "threshold": 0.7,  # Silero is very sure of synthetic speech: 0.7 gives a few more events than 0.5
    "prefix_padding_ms": 0,
    "silence_duration_ms": ANCHOR_SILENCE_MS,
    "create_response": False,
    "interrupt_response": False,
}


class Recording(Protocol):
    """What the matching reads of one client's run (``bench.clients.ClientRun`` is one)."""

    send_s: list[float]  # each append, after the SDK's send returned
    delta_s: list[float]  # arrival of each response.output_audio.delta
    # (kind, audio_ms, deltas received before it): the next delta is the anchored frame's
    speech_events: list[tuple[str, int, int]]


def vad_window_frames(frames: int) -> list[int]:
    """For each 32 ms VAD window, the index of the input frame whose processing completes it.

    The server resamples each 80 ms frame to 16 kHz with soxr's streaming resampler and scores
    every whole 512-sample window; how many samples come out per frame depends only on the sizes
    fed in, so the same resampler run here on silence gives the server's exact window -> frame map.
    """
    import soxr

    resampler = soxr.ResampleStream(SAMPLE_RATE, VAD_RATE, 1, dtype="float32")
    silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
    produced, owner = 0, []
    for frame in range(frames):
        produced += len(resampler.resample_chunk(silence))
        while (len(owner) + 1) * VAD_WINDOW_SAMPLES <= produced:
            owner.append(frame)
    return owner


def anchors_of(run: Recording, window_frames: list[int]) -> list[tuple[int, int]]:
    """(delta index, frame index) pairs known exactly from the speech events.

    speech_started fires in the window where speech starts (audio_start_ms is that window's start,
    with no prefix padding); speech_stopped in the first window ending ``silence_duration_ms``
    (rounded up to whole windows) after audio_end_ms. The server sends the event in the same
    batch as the audio delta of the step that consumed the frame completing that window.
    """
    anchors = []
    for kind, audio_ms, deltas_before in run.speech_events:
        if audio_ms % VAD_WINDOW_MS:
            continue
        if kind == "started":
            window = audio_ms // VAD_WINDOW_MS
        else:
            window = (audio_ms + VAD_WINDOW_MS * math.ceil(ANCHOR_SILENCE_MS / VAD_WINDOW_MS)) // VAD_WINDOW_MS - 1
        if window >= len(window_frames):
            continue
        frame = window_frames[window]
        # Frame 0 went to the slot's first step, which has no delta to anchor.
        if 1 <= frame < len(run.send_s) and deltas_before < len(run.delta_s):
            anchors.append((deltas_before, frame))
    return sorted(set(anchors))


def _greedy(
    send: list[float], deltas: list[float], d0: int, d1: int, f0: int, f1: int, theta: float
) -> tuple[dict[int, int], int]:
    """Deltas d0..d1-1 over frames f0..f1-1: each delta answers the next frame if that frame was
    sent at least theta before it arrived, else it is a step on silence. (frame -> delta, unanswered)."""
    answer, p = {}, f0
    for d in range(d0, d1):
        if p < f1 and deltas[d] - send[p] >= theta:
            answer[p] = d
            p += 1
    return answer, f1 - p


def _segment(
    send: list[float], deltas: list[float], d0: int, d1: int, f0: int, f1: int, theta: float
) -> dict[int, int]:
    """Deltas d0..d1-1 answer exactly frames f0..f1-1; the surplus were steps on silence. With no
    surplus (the usual case) the matching is exact; otherwise the threshold pass decides where the
    steps on silence were, its threshold lowered if needed until it answers every frame."""
    if d1 - d0 == f1 - f0:
        return {f0 + i: d0 + i for i in range(f1 - f0)}
    low, high = -10.0, 10.0
    for _ in range(60):
        middle = (low + high) / 2
        if _greedy(send, deltas, d0, d1, f0, f1, middle)[1] == 0:
            low = middle
        else:
            high = middle
    return _greedy(send, deltas, d0, d1, f0, f1, min(theta, low))[0]


def match_deltas(
    send: list[float], deltas: list[float], theta: float, anchors: list[tuple[int, int]] | None = None
) -> tuple[list[float | None], dict[str, int]]:
    """Latency of frames 1.. (frame 0 went to the slot's first step, which has no output).

    Between two anchors (delta d answers frame f, exactly) the deltas answer exactly the frames
    between them and the surplus were steps on silence; most often there is none and the matching
    is exact. Before the first anchor the same holds from (delta 0, frame 1). Where there is a
    surplus, after the last anchor, and without anchors, a delta answers the oldest unanswered
    frame when that frame was sent at least ``theta`` before it arrived. Anchors that contradict
    the ones before them are dropped (counted). latencies[0] is always None.
    """
    latencies: list[float | None] = [None] * len(send)
    counts = {"silence_before": 0, "silence_during": 0, "silence_after": 0, "anchors": 0, "anchors_dropped": 0}
    answer: dict[int, int] = {}
    d_next, f_next = 0, 1
    for d, f in anchors or []:
        if d < d_next or f < f_next or (d - d_next) < (f - f_next):
            counts["anchors_dropped"] += 1
            continue
        answer.update(_segment(send, deltas, d_next, d, f_next, f, theta))
        answer[f] = d
        counts["anchors"] += 1
        d_next, f_next = d + 1, f + 1
    tail, _ = _greedy(send, deltas, d_next, len(deltas), f_next, len(send), theta)
    answer.update(tail)
    answered_by = {d: f for f, d in answer.items()}
    last_frame_delta = max(answer.values(), default=-1)
    for f, d in answer.items():
        latencies[f] = deltas[d] - send[f]
    for d in range(len(deltas)):
        if d in answered_by:
            continue
        if answer.get(1) is None or d < answer[1]:
            counts["silence_before"] += 1
        elif d < last_frame_delta:
            counts["silence_during"] += 1
        else:
            counts["silence_after"] += 1
    return latencies, counts


def step_time_sigma(runs: list[Recording]) -> float:
    """Robust spread of one step's tick-to-delta time, from the gaps between a client's deltas
    while it streamed (the first few, where an idle engine runs steps back to back, left out)."""
    gaps: list[float] = []
    for run in runs:
        if len(run.send_s) < 2:
            continue
        during = [t for t in run.delta_s if run.send_s[1] <= t <= run.send_s[-1]]
        gaps += list(np.diff(during[3:]))
    if len(gaps) < 4:
        return 0.0
    values = np.asarray(gaps)
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad / math.sqrt(2)
