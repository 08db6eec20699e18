"""Prometheus metrics of the Realtime server, served at /metrics (per process).

Counters and histograms are updated where things happen (the consumer, the inference thread);
slot and queue gauges are read from the ModelManager when /metrics is scraped, so they cost
nothing in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Buckets around one 80 ms frame: real time means every step and every frame stays under it.
_FRAME_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)

SESSIONS_LIVE = Gauge("realtime_sessions_live", "Realtime WebSocket sessions connected to this process.")
SESSIONS_REFUSED = Counter("realtime_sessions_refused_total", "Connections refused before a session started.", ["code"])
ERRORS = Counter("realtime_errors_total", "error events sent to clients, by error code.", ["code"])
MODEL_STEP_SECONDS = Histogram(
    "realtime_model_step_seconds", "One batched Mimi encode + LM step + decode.", ["model_type"], buckets=_FRAME_BUCKETS
)
REAL_TIME_FACTOR = Gauge(
    "realtime_real_time_factor",
    "Last model step time over the 80 ms frame it produced (<1 is real time).",
    ["model_type"],
)
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


def observe_step(model_type: str, seconds: float, frame_seconds: float = 0.08) -> None:
    """Called by the inference thread after each batched step (the manager's on_step)."""
    MODEL_STEP_SECONDS.labels(model_type).observe(seconds)
    REAL_TIME_FACTOR.labels(model_type).set(seconds / frame_seconds)


class SlotCollector(Collector):
    """Slots in use and queue depths, read from the manager at scrape time.

    The manager is reached through a callable set by the voice app (`watch_manager`), so that
    this module and the engine do not import each other.
    """

    def __init__(self) -> None:
        self.manager: Callable[[], Any] = lambda: None

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # names are only known at scrape time; this keeps register() from collecting early

    def collect(self) -> Iterator[GaugeMetricFamily]:
        manager = self.manager()
        slots = GaugeMetricFamily("realtime_slots", "Session slots per model type.", labels=["model_type", "state"])
        inbox = GaugeMetricFamily(
            "realtime_input_queue_frames", "Client audio frames waiting for the model.", labels=["model_type"]
        )
        outbox = GaugeMetricFamily(
            "realtime_output_queue_frames", "Model output frames waiting to be sent.", labels=["model_type"]
        )
        ready = GaugeMetricFamily("realtime_model_ready", "1 when the model is loaded and warm.")
        ready.add_metric([], 1.0 if manager is not None and manager.ready else 0.0)
        if manager is not None:
            for model_type, engine in manager.engines.items():
                live = [slot for slot in list(engine.slots) if slot is not None]
                slots.add_metric([model_type, "in_use"], len(live))
                slots.add_metric([model_type, "free"], engine.batch_size - len(live))
                inbox.add_metric([model_type], sum(slot.queued_frames for slot in live))
                outbox.add_metric([model_type], sum(slot.outbox.qsize() for slot in live))
        yield from (slots, inbox, outbox, ready)


_slots = SlotCollector()
REGISTRY.register(_slots)


def watch_manager(manager: Callable[[], Any]) -> None:
    """Where /metrics reads the slots from: the process's ModelManager getter."""
    _slots.manager = manager
