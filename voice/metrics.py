"""Prometheus metrics of the Realtime server, served at /metrics (per process).

Counters and histograms are updated where things happen (the session runtime); slot, queue and
model-step figures are read from the manager's status when /metrics is scraped (the model may
step in another process: voice/engine/service.py), so they cost nothing in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# Buckets around one 80 ms frame: real time means every step and every frame stays under it.
_FRAME_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)

FRAME_SECONDS = 0.08

SESSIONS_LIVE = Gauge("realtime_sessions_live", "Realtime WebSocket sessions connected to this process.")
SESSIONS_REFUSED = Counter("realtime_sessions_refused_total", "Connections refused before a session started.", ["code"])
ERRORS = Counter("realtime_errors_total", "error events sent to clients, by error code.", ["code"])
FRAME_LATENCY_SECONDS = Histogram(
    "realtime_frame_latency_seconds",
    "Server latency per frame: client audio frame queued for the model -> audio delta sent.",
    buckets=_FRAME_BUCKETS,
)
FRAME_OVERHEAD_SECONDS = Histogram(
    "realtime_frame_overhead_seconds",
    "Server work per frame outside the model step: output handed to the session -> events sent.",
    buckets=_FRAME_BUCKETS,
)
DROPPED_OUTPUT_FRAMES = Counter(
    "realtime_dropped_output_frames_total", "Model output frames dropped because a client read too slowly."
)
STORE_FAILURES = Counter(
    "realtime_store_failures_total",
    "Conversation-store writes that failed or were given up, by operation (see voice/recorder.py): "
    "conversation_start, records (a batch, then retried record by record), record (records lost), "
    "dropped (records never queued: queue full or writer stopped), conversation_end, close_timeout.",
    ["operation"],
)
SESSION_FAILURES = Counter(
    "realtime_session_failures_total",
    "Exceptions caught by a session's error boundary (answered with a server_error event), by where.",
    ["where"],
)
SESSIONS_ENDED = Counter("realtime_sessions_ended_total", "Sessions ended, by reason.", ["reason"])


class SlotCollector(Collector):
    """Slots, queues and model steps, read from the manager's status at scrape time.

    The manager is reached through a callable set by the voice app (`watch_manager`), so that
    this module and the engine do not import each other. Its status is the same dict whether the
    model runs in this process or in the engine process (ModelManager.status): with several web
    workers, each shows the one engine's slots and steps.
    """

    def __init__(self) -> None:
        self.manager: Callable[[], Any] = lambda: None

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # names are only known at scrape time; this keeps register() from collecting early

    def collect(self) -> Iterator[Any]:
        manager = self.manager()
        status = manager.status(max_age=0.0) if manager is not None else None
        slots = GaugeMetricFamily("realtime_slots", "Session slots per model type.", labels=["model_type", "state"])
        inbox = GaugeMetricFamily(
            "realtime_input_queue_frames", "Client audio frames waiting for the model.", labels=["model_type"]
        )
        rows = GaugeMetricFamily(
            "realtime_engine_rows", "Rows of the batched streaming state (stepped each tick).", labels=["model_type"]
        )
        factor = GaugeMetricFamily(
            "realtime_real_time_factor",
            "Last model step time over the 80 ms frame it produced (<1 is real time).",
            labels=["model_type"],
        )
        steps = HistogramMetricFamily(
            "realtime_model_step_seconds", "One batched Mimi encode + LM step + decode.", labels=["model_type"]
        )
        ready = GaugeMetricFamily(
            "realtime_model_ready", "1 when the model is loaded and warm (and its engine answers)."
        )
        ready.add_metric([], 1.0 if status is not None and status.get("ready") else 0.0)
        for model_type, info in (status or {}).get("models", {}).items():
            slots.add_metric([model_type, "in_use"], info["in_use"])
            slots.add_metric([model_type, "free"], info["slots"] - info["in_use"])
            inbox.add_metric([model_type], info["queued_frames"])
            rows.add_metric([model_type], info["rows"])
            factor.add_metric([model_type], info["last_step_s"] / FRAME_SECONDS)
            cumulative, buckets = 0, []
            for bound, count in info["step_buckets"]:
                cumulative += count
                buckets.append((str(bound) if bound == "+Inf" else repr(float(bound)), cumulative))
            steps.add_metric([model_type], buckets, info["step_seconds_sum"])
        yield from (slots, inbox, rows, factor, steps, ready)


_slots = SlotCollector()
REGISTRY.register(_slots)


def watch_manager(manager: Callable[[], Any]) -> None:
    """Where /metrics reads the slots from: the process's ModelManager getter."""
    _slots.manager = manager
