"""What the server says about itself: ``/metrics`` fetched, parsed, differenced and polled.

The server's own figures (model step time, overhead per frame, its frame latency, event-loop
stalls) are Prometheus histograms and counters over the process' lifetime. Each K is measured
from the difference of two scrapes, one before the run and one after, so everything here works
on a flat ``Samples`` map (metric sample name + sorted labels -> value): the difference of a
histogram's cumulative buckets, count and sum; quantiles estimated from those buckets the way
Prometheus' ``histogram_quantile`` does; and the wait, between two K, until the server is idle so
that one K's last steps never land in the next K's histograms.
"""

from __future__ import annotations

import contextlib
import math
import time
import urllib.error
import urllib.request
from typing import Any


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


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
