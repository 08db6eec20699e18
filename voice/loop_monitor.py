"""Measures how late the event loop wakes up: the stall every session in the process feels.

A task sleeps for a short interval again and again; whatever it wakes up late by, something else
held the loop (model work that slipped onto it, a slow synchronous call). Started once per loop by
the first Realtime connection, exported as Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from prometheus_client import Gauge, Histogram

INTERVAL_S = 0.01

LOOP_STALL_SECONDS = Histogram(
    "realtime_event_loop_stall_seconds",
    "How late the event loop woke a 10 ms timer.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LOOP_STALL_MAX = Gauge("realtime_event_loop_stall_max_seconds", "Worst event-loop stall since the process started.")

_watched: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def watch_running_loop() -> None:
    """Start the monitor on the running loop, once."""
    loop = asyncio.get_running_loop()
    if loop in _watched:
        return
    _watched.add(loop)
    loop.create_task(_monitor(), name="event-loop-monitor")


async def _monitor() -> None:
    worst = 0.0
    while True:
        before = time.perf_counter()
        await asyncio.sleep(INTERVAL_S)
        stall = max(0.0, time.perf_counter() - before - INTERVAL_S)
        LOOP_STALL_SECONDS.observe(stall)
        if stall > worst:
            worst = stall
            LOOP_STALL_MAX.set(worst)
