"""How many concurrent Realtime sessions one server process holds in real time: batched vs serial.

What it measures
----------------
For each engine mode (``REALTIME_ENGINE=batched``: every session is one slot of a batch stepped
once per 80 ms tick; ``serial``: the old design, one batch-1 engine per session, all stepping under
one lock) the script starts its own ``daphne realtime_project.asgi:application`` on a free
127.0.0.1 port (fresh SQLite database and demo checkpoint in a temporary folder,
``REALTIME_MAX_SESSIONS`` = the largest K, responses that never end, no idle timeout), and for each
K opens K concurrent clients written with the official openai SDK (GA dialect). Each client:

1. sends ``session.update`` with a turn detection that never acts -- ``server_vad`` with
   ``create_response`` and ``interrupt_response`` false, so voice activity neither opens nor
   cancels a response, exactly like ``turn_detection: null`` (``--no-anchors`` sends that
   instead) -- but whose ``speech_started`` / ``speech_stopped`` events anchor the latency
   measurement (below), and waits for ``session.updated``; all K clients then start together,
   each shifted by ``i * 80 ms / K`` so that their frames reach the server at different points of
   a tick;
2. streams speech from ``tests/audio`` (three files, a different file and start offset per
   client, looping) in real time: exact 80 ms appends of 1920 samples (3840 bytes of pcm16), each
   sent at ``start + n * 80 ms`` (a fixed schedule, so the client never drifts), for
   ``--seconds``, with ``response.create`` sent right behind the first append (see below why
   behind it and not before it);
3. keeps reading until every frame it sent has been answered (or ``--drain`` seconds pass).

Per client it records when each frame left (after the SDK's send returned), when each
``response.output_audio.delta`` arrived, and every ``error`` event (``input_audio_buffer_overflow``
means the server fell more than ``REALTIME_INPUT_QUEUE_FRAMES`` behind).

* **TTFA**: first audio delta minus the first append.
* **Frame latency**: arrival of the delta produced by the model step that consumed a frame, minus
  the time that frame was sent. Each model step gives one output frame, except a fresh slot's
  first step, which has none (the model's one-frame delay), so the n-th delta answers frame n+1
  -- if frame 0 is what that first step consumed. That is why ``response.create`` goes right
  *behind* the first append: sent first, it lets the server step the slot on silence before
  frame 0 arrives (a race, seen in practice). But while a response is open the server also steps
  a slot on silence at any tick where none of its client's frames is queued (a frame that lands
  just after a tick; an idle engine that wakes up also runs a few steps back to back), and those
  steps produce deltas too, so "delta n answers frame n+1" does not hold for long. Nor can any
  timing rule seen from the client tell "this frame waited one more tick" from "that delta came
  from a step on silence" when a frame lands within the step-time jitter of a tick (tried: a
  threshold put the mean 46 ms off in one run and 49 ms in another). Hence the anchors: the
  server sends ``speech_started`` / ``speech_stopped`` in the same batch as the audio delta of the
  step that consumed the frame completing the VAD window where the event fired; that window is in
  the event (``audio_start_ms`` with no prefix padding, ``audio_end_ms`` plus the silence
  duration) and which frame completes it follows from the sizes alone (the server's soxr stream
  resampler, run here on silence). Between two anchors the deltas answer exactly the frames in
  between and any surplus delta was a step on silence -- usually there is none and the matching
  is exact; where there is one (and after the last anchor) a delta answers the oldest unanswered
  frame if it was sent at least ``theta`` before the delta arrived, ``theta`` being the mean time
  from a tick to its delta leaving the server (exact means of the step and overhead histograms)
  less twice the spread of the step time (from the jitter of the gaps between deltas). Reported
  as checks: per client the counts (deltas, anchors, steps on silence before / during / after
  the stream), the plain "delta n answers frame n+1" figure, the server's own count of frame
  latencies (it must equal the frames answered) and the client's mean latency minus the server's
  exact mean of ``realtime_frame_latency_seconds`` (queued -> sent): the client adds only
  loopback transport and both event loops' queueing, so a few ms, never near +-80 ms.

After each K the script scrapes ``/metrics`` and works from the difference of the histograms
before and after the run: model step p50 (``realtime_model_step_seconds``: the batched encode +
LM step + decode alone, without the slots' Silero VAD or the serial engine's wait for its lock),
real-time factor (step p50 / 80 ms), server overhead per frame p50
(``realtime_frame_overhead_seconds``), the server's frame latency, and the event loop's worst stall
(``realtime_event_loop_stall_max_seconds`` is a process-lifetime maximum, so the largest
``realtime_event_loop_stall_seconds`` bucket hit during this K is reported too).

A K is **held in real time** when no client saw an overflow error (or any other error, or a failed
connection), every frame was answered, the p95 frame latency over all clients is under 240 ms
(80 ms frame + 80 ms acoustic delay + one tick of scheduling), and latency does not grow through
the run: p95 of the last quarter of the frames < 1.5 x p95 of the first quarter + 40 ms.

Before the first K each server gets ``--warmup`` seconds of unmeasured sessions on every slot
(``--warmup-sessions``, default the largest K): the first session after start-up, and the first on
each slot, pay one-time costs on the inference thread (each slot's own TorchScript Silero VAD takes
~40-65 ms over its first two frames), and seventeen cold slots starting together stalled the
engine for 200-500 ms in a trial -- latency the sessions then never won back. With the slots warm
the figures are the server's steady state; ``--warmup-sessions 1`` shows the cold start. Per K the script
also records the CPU used by the server, by itself and by any other process on the machine (a
benchmark on a shared machine is only as good as its quiet).

Output: a table on stdout, ``<out>/results.json`` (every raw figure, per client, plus the
machine), ``<out>/latency_vs_k.png`` and each server's log ``<out>/daphne-<mode>.log``.

Usage (from the repository root)::

    .venv/bin/python bench/realtime_bench.py [--ks 1,2,4,8,16] [--seconds 8] [--out bench/out]

Everything talks to 127.0.0.1 only, every wait has a timeout, and the servers are stopped (by
PID) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/realtime_bench.py`: make the project importable

from voice.testing.live_server import LiveServer  # noqa: E402

DEFAULT_AUDIO = REPO / "tests" / "audio"
AUDIO_FILES = ("weather_en_24k.wav", "hello_booking_24k.wav", "train_fr_24k.wav")
SAMPLE_RATE = 24000
FRAME_S = 0.08
FRAME_SAMPLES = 1920
FRAME_BYTES = FRAME_SAMPLES * 2
REAL_TIME_BOUND_S = 0.240  # 80 ms frame + 80 ms acoustic delay + one 80 ms tick of scheduling
GROWTH_FACTOR, GROWTH_SLACK_S = 1.5, 0.040
# Turn detection that never acts (no response created, none cancelled) but still sends
# speech_started / speech_stopped: the anchors of the delta <-> frame matching (see the docstring).
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
MODES = ("batched", "serial")

# --- the server -------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


class Server(LiveServer):
    """One daphne per engine mode, in its own process, temporary folder, database and checkpoint."""

    def __init__(self, mode: str, max_sessions: int, workdir: Path, log_path: Path) -> None:
        super().__init__(
            workdir,
            {
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


# --- /metrics ---------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(f"{url}/metrics", timeout=10)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def _matches(labels: tuple[tuple[str, str], ...], wanted: dict[str, str]) -> bool:
    have = dict(labels)
    return all(have.get(key) == value for key, value in wanted.items())


def histogram_delta(before: Samples, after: Samples, name: str, **wanted: str) -> dict[str, Any]:
    """Cumulative buckets, count and sum of a histogram over the run (after - before)."""
    buckets: dict[float, float] = {}
    for (sample, labels), value in after.items():
        if sample == f"{name}_bucket" and _matches(labels, wanted):
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + value - before.get((sample, labels), 0.0)
    total = count = 0.0
    for (sample, labels), value in after.items():
        if _matches(labels, wanted):
            if sample == f"{name}_sum":
                total += value - before.get((sample, labels), 0.0)
            elif sample == f"{name}_count":
                count += value - before.get((sample, labels), 0.0)
    ordered = sorted(buckets.items())
    return {"buckets": ordered, "count": count, "sum": total, "mean": total / count if count else None}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket; the top finite bound if in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return prev_le
            if cumulative == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (cumulative - prev_count)
        prev_le, prev_count = le, cumulative
    return prev_le


def highest_bucket_hit(buckets: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(lower, upper] bounds of the highest bucket that received an observation during the run."""
    hit = None
    prev_le, prev_count = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative > prev_count + 1e-9:
            hit = (prev_le, le)
        prev_le, prev_count = le, cumulative
    return hit


def value_of(samples: Samples, name: str, **wanted: str) -> float | None:
    values = [value for (sample, labels), value in samples.items() if sample == name and _matches(labels, wanted)]
    return sum(values) if values else None


def counter_delta_by(before: Samples, after: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, labels), value in after.items():
        if sample == name:
            delta = value - before.get((sample, labels), 0.0)
            if delta:
                out[dict(labels).get(label, "")] = delta
    return out


# --- the clients ------------------------------------------------------------------------------


def load_audio(folder: Path) -> dict[str, bytes]:
    audio = {}
    for name in AUDIO_FILES:
        with wave.open(str(folder / name)) as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
                raise SystemExit(f"{name}: expected 24 kHz mono pcm16")
            audio[name] = wav.readframes(wav.getnframes())
    return audio


def client_frames(pcm: bytes, offset_s: float, frames: int) -> list[str]:
    """``frames`` base64 appends of exactly 3840 bytes, from ``offset_s`` on, looping over the file."""
    start = int(offset_s * SAMPLE_RATE) * 2 % len(pcm)
    needed = frames * FRAME_BYTES
    looped = (pcm[start:] + pcm * (needed // len(pcm) + 2))[:needed]
    return [base64.b64encode(looped[i : i + FRAME_BYTES]).decode() for i in range(0, needed, FRAME_BYTES)]


@dataclass
class ClientRun:
    index: int
    audio_file: str
    offset_s: float
    phase_s: float
    frames_planned: int
    send_s: list[float] = field(default_factory=list)  # each append, after the SDK's send returned
    lag_s: list[float] = field(default_factory=list)  # send time minus its scheduled time
    delta_s: list[float] = field(default_factory=list)  # arrival of each response.output_audio.delta
    response_create_s: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    # (kind, audio_ms, deltas received before it): the next delta is the anchored frame's
    speech_events: list[tuple[str, int, int]] = field(default_factory=list)
    event_counts: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # connection failed, closed early, timed out
    closed_by_server: bool = False


async def run_client(
    index: int,
    port: int,
    run: ClientRun,
    appends: list[str],
    ready: asyncio.Event,
    go: asyncio.Future[float],
    drain_s: float,
    timeout_s: float,
    turn_detection: dict[str, Any] | None,
) -> None:
    from openai import AsyncOpenAI

    updated = asyncio.Event()
    created = asyncio.Event()

    async def read(conn: Any) -> None:
        async for event in conn:
            now = time.perf_counter()
            kind = event.type
            run.event_counts[kind] = run.event_counts.get(kind, 0) + 1
            if kind == "response.output_audio.delta":
                run.delta_s.append(now)
            elif kind == "error":
                error = event.error
                run.errors.append({"t": now, "code": error.code, "type": error.type, "message": error.message})
            elif kind == "input_audio_buffer.speech_started":
                run.speech_events.append(("started", event.audio_start_ms, len(run.delta_s)))
            elif kind == "input_audio_buffer.speech_stopped":
                run.speech_events.append(("stopped", event.audio_end_ms, len(run.delta_s)))
            elif kind == "session.created":
                created.set()
            elif kind == "session.updated":
                updated.set()
        run.closed_by_server = True

    async def session(conn: Any) -> None:
        reader = asyncio.create_task(read(conn), name=f"reader-{index}")
        try:
            await asyncio.wait_for(created.wait(), 30)
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}}
            )
            await asyncio.wait_for(updated.wait(), 30)
            ready.set()
            start = await go + run.phase_s
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            for n, audio in enumerate(appends):
                due = start + n * FRAME_S
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if reader.done():
                    raise RuntimeError("the server closed the connection while streaming")
                await conn.input_audio_buffer.append(audio=audio)
                sent = time.perf_counter()
                run.send_s.append(sent)
                run.lag_s.append(sent - due)
                if n == 0:
                    # Right behind the first frame, so that this frame (and never a step on
                    # silence) is what the slot's first, output-less step consumes.
                    run.response_create_s = time.perf_counter()
                    await conn.response.create()
            # Drain: until every frame could have been answered (the loosest matching), plus a margin.
            deadline = time.perf_counter() + drain_s
            while time.perf_counter() < deadline and not reader.done():
                latencies, _ = match_deltas(run.send_s, run.delta_s, theta=0.0)
                if all(value is not None for value in latencies[1:]):
                    await asyncio.sleep(min(0.4, max(0.0, deadline - time.perf_counter())))
                    break
                await asyncio.sleep(0.05)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    client = AsyncOpenAI(
        api_key="bench",
        base_url=f"http://127.0.0.1:{port}/v1",
        websocket_base_url=f"ws://127.0.0.1:{port}/v1",
        max_retries=0,
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with client.realtime.connect(model="moshi", max_retries=0) as conn:
                await session(conn)
    except Exception as exc:  # noqa: BLE001 - one failed client is a result, not a crash
        run.failure = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        ready.set()  # never leave the start barrier waiting on a client that failed
        with contextlib.suppress(Exception):
            await client.close()


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


def anchors_of(run: ClientRun, window_frames: list[int]) -> list[tuple[int, int]]:
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


async def run_k(
    port: int, k: int, seconds: float, drain_s: float, audio: dict[str, bytes], turn_detection: dict[str, Any] | None
) -> list[ClientRun]:
    frames = round(seconds / FRAME_S)
    runs, plans = [], []
    for i in range(k):
        name = AUDIO_FILES[i % len(AUDIO_FILES)]
        duration = len(audio[name]) / 2 / SAMPLE_RATE
        offset = round((i // len(AUDIO_FILES)) * 1.37 % duration, 2)
        runs.append(
            ClientRun(index=i, audio_file=name, offset_s=offset, phase_s=i * FRAME_S / k, frames_planned=frames)
        )
        plans.append(client_frames(audio[name], offset, frames))
    loop = asyncio.get_running_loop()
    go: asyncio.Future[float] = loop.create_future()
    readies = [asyncio.Event() for _ in range(k)]
    timeout_s = 60 + seconds + drain_s + 30
    tasks = [
        asyncio.create_task(run_client(i, port, runs[i], plans[i], readies[i], go, drain_s, timeout_s, turn_detection))
        for i in range(k)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in readies)), timeout=60)
    except TimeoutError:
        pass  # the clients not ready by now time out by themselves
    go.set_result(time.perf_counter() + 0.3)
    await asyncio.wait(tasks, timeout=timeout_s + 10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return runs


# --- one K, summarised ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)


def step_time_sigma(runs: list[ClientRun]) -> float:
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


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine, all cores (from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(url: str, timeout: float, quiet_s: float = 1.0) -> bool:
    """Until no slot is in use and no model step has run for ``quiet_s``: the previous sessions are
    gone and so are their last steps (on the serial engine, steps still queued for the shared lock
    finish after their sessions have left, and would land in the next K's histograms)."""
    deadline = time.monotonic() + timeout
    steps, since = None, time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            samples = scrape(url)
            busy = value_of(samples, "realtime_slots", state="in_use") or value_of(samples, "realtime_sessions_live")
            count = value_of(samples, "realtime_model_step_seconds_count")
            if busy or count != steps:
                steps, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return True
        time.sleep(0.2)
    return False


def bench_mode(
    mode: str, ks: list[int], args: argparse.Namespace, audio: dict[str, bytes], out: Path
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"realtime-bench-{mode}-"))
    server = Server(mode, max(ks), workdir, out / f"daphne-{mode}.log")
    result: dict[str, Any] = {"mode": mode, "max_sessions": max(ks), "ks": []}
    try:
        print(f"[{mode}] starting daphne on 127.0.0.1:{server.port} (REALTIME_MAX_SESSIONS={max(ks)}) ...", flush=True)
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


# --- report -----------------------------------------------------------------------------------

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
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
    if not ks or min(ks) < 1 or any(mode not in MODES for mode in modes):
        parser.error(f"--ks needs positive integers and --modes a subset of {MODES}")
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
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "latency_vs_k.png")

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
