"""What the server says about itself: ``/metrics`` fetched, parsed, differenced and polled.

The server's own figures (model step time, overhead per frame, its frame latency, event-loop
stalls) are Prometheus histograms and counters over the process' lifetime. Each K is measured
from the difference of two scrapes, one before the run and one after, so everything here works
on a flat ``Samples`` map (metric sample name + sorted labels -> value): the difference of a
histogram's cumulative buckets, count and sum; quantiles estimated from those buckets the way
Prometheus' ``histogram_quantile`` does; and the wait, between two K, until the server is idle so
that one K's last steps never land in the next K's histograms.

Several daphne workers behind one port (``deploy/supervisord.conf``) each serve their own
``/metrics``; :func:`scrape_processes` scrapes until it has seen every worker and tags each sample
with a ``_process`` label (``bench.servers`` finds the PID that answered each scrape), so that the
per-session figures (overhead, frame latency, loop stalls, errors) are summed over the workers by
the same functions. The model step is the engine's, one per server, and every worker reports the
same engine histogram, so :func:`engine_histogram_delta` takes it from the one process that saw
the most steps instead of summing. A metric a server does not export is
``None`` / empty everywhere here, never an exception: the report prints "n/a".
"""

from __future__ import annotations

import contextlib
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    status, body = http_get(f"{url}/metrics", timeout=10)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return parse_metrics(body)


def parse_metrics(body: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

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
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + delta  # summed over the processes, if tagged
    return out


def wait_for_idle(
    url: str, timeout: float, quiet_s: float = 1.0, scraper: Callable[[str], Samples] | None = None
) -> bool:
    """Until no slot is in use and no model step has run for ``quiet_s``: the previous sessions are
    gone and so are their last steps (on the serial engine, steps still queued for the shared lock
    finish after their sessions have left, and would land in the next K's histograms)."""
    deadline = time.monotonic() + timeout
    steps, since = None, time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            samples = (scraper or scrape)(url)
            busy = value_of(samples, "realtime_slots", state="in_use") or value_of(samples, "realtime_sessions_live")
            count = value_of(samples, "realtime_model_step_seconds_count")
            if busy or count != steps:
                steps, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return True
        time.sleep(0.2)
    return False


PROCESS_LABEL = "_process"


def max_of(samples: Samples, name: str, **wanted: str) -> float | None:
    """The largest value of a gauge over its label sets (and processes): a worst-case figure."""
    values = [value for (sample, labels), value in samples.items() if sample == name and _matches(labels, wanted)]
    return max(values) if values else None


def _process_of(labels: tuple[tuple[str, str], ...]) -> str:
    return dict(labels).get(PROCESS_LABEL, "")


def tag_process(samples: Samples, key: str) -> Samples:
    """The same samples with a ``_process`` label, so that several processes' samples can share one map."""
    return {(name, tuple(sorted((*labels, (PROCESS_LABEL, key))))): value for (name, labels), value in samples.items()}


# Added to a scrape by the benchmark itself (bench.servers) when it found which process answered.
SERVER_PID_SAMPLE = "bench_answering_pid"


def process_key(samples: Samples) -> str | None:
    """What tells one server process's scrape from another's: the PID that answered, where the
    benchmark found it (``SERVER_PID_SAMPLE``), else the start time prometheus_client's process
    collector exports (10 ms resolution: workers started in the same tick look like one); None
    where there is neither."""
    pid = value_of(samples, SERVER_PID_SAMPLE)
    if pid is not None:
        return f"pid {pid:.0f}"
    start = value_of(samples, "process_start_time_seconds")
    return None if start is None else repr(start)


def scrape_processes(url: str, processes: int, scraper: Callable[[str], Samples] | None = None) -> Samples:
    """``/metrics`` of every one of ``processes`` workers behind one port, tagged per process.

    Each scrape is a new connection, which the kernel hands to one of the workers; scrape until
    ``processes`` different ones have answered (or 6 tries per worker have passed: the samples
    then cover the workers seen). One process: the plain scrape, tagged.
    """
    fetch = scraper or scrape
    seen: dict[str, Samples] = {}
    for _ in range(max(1, 6 * processes)):
        samples = fetch(url)
        key = process_key(samples)
        if key is None:
            return tag_process(samples, "")  # no way to tell processes apart: one scrape is all we know
        seen[key] = samples
        if len(seen) >= processes:
            break
    merged: Samples = {}
    for key, samples in seen.items():
        merged.update(tag_process(samples, key))
    return merged


def processes_in(samples: Samples) -> set[str]:
    return {_process_of(labels) for _, labels in samples}


def common_processes(before: Samples, after: Samples) -> tuple[Samples, Samples]:
    """Both scrapes restricted to the processes seen in both: a worker seen only after the run would
    otherwise bring its whole lifetime's counts into the difference."""
    both = processes_in(before) & processes_in(after)
    keep_before = {key: value for key, value in before.items() if _process_of(key[1]) in both}
    keep_after = {key: value for key, value in after.items() if _process_of(key[1]) in both}
    return keep_before, keep_after


def engine_histogram_delta(before: Samples, after: Samples, name: str, **wanted: str) -> dict[str, Any]:
    """:func:`histogram_delta` of the one process that saw the most observations: the engine's own
    histogram, which every worker of a server may report (one engine per server)."""
    best = histogram_delta({}, {}, name)
    for process in sorted(processes_in(after)) or [""]:
        delta = histogram_delta(before, after, name, **wanted, **({PROCESS_LABEL: process} if process else {}))
        if delta["count"] > best["count"]:
            best = delta
    return best


def histogram_label_values(samples: Samples, name: str, ignore: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Labels of a histogram's buckets other than ``le``, ``_process`` and ``ignore``, with their values."""
    found: dict[str, set[str]] = {}
    for (sample, labels), _ in samples.items():
        if sample != f"{name}_bucket":
            continue
        for key, value in labels:
            if key not in ("le", PROCESS_LABEL, *ignore):
                found.setdefault(key, set()).add(value)
    return found
