"""bench/scraping.py: /metrics parsed, histograms differenced, quantiles from buckets, idle polling.

No server: the exposition text and the sample maps are written here by hand. Bucket bounds are
powers of two, so every interpolated quantile is asserted exactly.
"""

from __future__ import annotations

import math

import pytest

from bench import scraping
from bench.scraping import (
    PROCESS_LABEL,
    Samples,
    common_processes,
    counter_delta_by,
    engine_histogram_delta,
    highest_bucket_hit,
    histogram_delta,
    histogram_label_values,
    histogram_quantile,
    max_of,
    process_key,
    processes_in,
    scrape_processes,
    tag_process,
    value_of,
)

INF = math.inf

# --- histogram_quantile: Prometheus' estimate from cumulative buckets ----------------------------


def test_quantile_of_nothing() -> None:
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.25, 0.0), (INF, 0.0)]) is None


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(0.25, 2.0), (0.5, 6.0), (INF, 8.0)]  # 2 in (0, 0.25], 4 in (0.25, 0.5], 2 above
    assert histogram_quantile(0.125, buckets) == 0.125  # rank 1 of 2 in the first bucket, from 0
    assert histogram_quantile(0.25, buckets) == 0.25  # rank 2: the first bucket's top
    assert histogram_quantile(0.5, buckets) == 0.375  # rank 4: half way through the second
    assert histogram_quantile(0.75, buckets) == 0.5


def test_quantile_in_the_inf_bucket_is_the_top_finite_bound() -> None:
    buckets = [(0.25, 2.0), (0.5, 6.0), (INF, 8.0)]
    assert histogram_quantile(0.95, buckets) == 0.5
    assert histogram_quantile(1.0, buckets) == 0.5
    assert histogram_quantile(0.5, [(INF, 3.0)]) == 0.0  # nothing finite to go by


def test_quantile_of_one_observation() -> None:
    buckets = [(0.25, 0.0), (0.5, 1.0), (INF, 1.0)]
    assert histogram_quantile(0.5, buckets) == 0.375
    assert histogram_quantile(0.99, buckets) == 0.25 + 0.25 * 0.99


def test_quantile_of_ties_spreads_them_over_their_bucket() -> None:
    # Four equal observations land in one bucket; the estimate is linear across it.
    buckets = [(0.25, 0.0), (0.5, 4.0), (INF, 4.0)]
    assert histogram_quantile(0.25, buckets) == 0.3125
    assert histogram_quantile(0.5, buckets) == 0.375
    assert histogram_quantile(1.0, buckets) == 0.5


def test_quantile_zero_and_an_empty_first_bucket() -> None:
    # Rank 0 is reached by the first bucket even when it is empty: its upper bound.
    assert histogram_quantile(0.0, [(0.25, 0.0), (0.5, 4.0)]) == 0.25
    assert histogram_quantile(0.0, [(0.25, 2.0), (0.5, 4.0)]) == 0.0


def test_quantile_past_the_last_bucket() -> None:
    assert histogram_quantile(2.0, [(0.25, 2.0), (0.5, 4.0)]) == 0.5


# --- highest_bucket_hit ------------------------------------------------------------------------


def test_highest_bucket_hit() -> None:
    assert highest_bucket_hit([]) is None
    assert highest_bucket_hit([(0.25, 0.0), (INF, 0.0)]) is None
    assert highest_bucket_hit([(0.25, 0.0), (0.5, 3.0), (1.0, 3.0), (INF, 3.0)]) == (0.25, 0.5)
    assert highest_bucket_hit([(0.25, 1.0), (0.5, 1.0), (1.0, 2.0), (INF, 2.0)]) == (0.5, 1.0)
    assert highest_bucket_hit([(0.5, 1.0), (INF, 2.0)]) == (0.5, INF)


# --- differences of two scrapes ----------------------------------------------------------------


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


BEFORE: Samples = {
    ("step_bucket", labels(le="0.25", model_type="sft")): 1.0,
    ("step_bucket", labels(le="+Inf", model_type="sft")): 2.0,
    ("step_sum", labels(model_type="sft")): 0.5,
    ("step_count", labels(model_type="sft")): 2.0,
}
AFTER: Samples = {
    ("step_bucket", labels(le="0.25", model_type="sft")): 5.0,
    ("step_bucket", labels(le="+Inf", model_type="sft")): 8.0,
    ("step_sum", labels(model_type="sft")): 2.0,
    ("step_count", labels(model_type="sft")): 8.0,
    # A second model type, absent before: counted whole.
    ("step_bucket", labels(le="0.25", model_type="base")): 1.0,
    ("step_bucket", labels(le="+Inf", model_type="base")): 2.0,
    ("step_sum", labels(model_type="base")): 0.5,
    ("step_count", labels(model_type="base")): 2.0,
    ("errors_total", labels(code="overflow")): 3.0,
    ("errors_total", labels(code="busy")): 1.0,
    ("errors_total", labels()): 2.0,
    ("slots", labels(state="in_use")): 2.0,
    ("slots", labels(state="free")): 6.0,
}


def test_histogram_delta_of_one_label_set() -> None:
    assert histogram_delta(BEFORE, AFTER, "step", model_type="sft") == {
        "buckets": [(0.25, 4.0), (INF, 6.0)],
        "count": 6.0,
        "sum": 1.5,
        "mean": 0.25,
    }


def test_histogram_delta_sums_label_sets() -> None:
    assert histogram_delta(BEFORE, AFTER, "step") == {
        "buckets": [(0.25, 5.0), (INF, 8.0)],
        "count": 8.0,
        "sum": 2.0,
        "mean": 0.25,
    }


def test_histogram_delta_of_nothing_observed() -> None:
    assert histogram_delta(AFTER, AFTER, "step", model_type="sft") == {
        "buckets": [(0.25, 0.0), (INF, 0.0)],
        "count": 0.0,
        "sum": 0.0,
        "mean": None,
    }
    assert histogram_delta({}, {}, "step") == {"buckets": [], "count": 0.0, "sum": 0.0, "mean": None}


def test_value_of() -> None:
    assert value_of(AFTER, "slots", state="in_use") == 2.0
    assert value_of(AFTER, "slots") == 8.0  # every label set, summed
    assert value_of(AFTER, "slots", state="gone") is None
    assert value_of(AFTER, "missing") is None


def test_counter_delta_by() -> None:
    before: Samples = {("errors_total", labels(code="overflow")): 1.0, ("errors_total", labels(code="busy")): 1.0}
    # busy did not move: left out; a sample without the label is keyed "".
    assert counter_delta_by(before, AFTER, "errors_total", "code") == {"overflow": 2.0, "": 2.0}
    assert counter_delta_by(AFTER, AFTER, "errors_total", "code") == {}


# --- scrape: the exposition format, parsed -----------------------------------------------------

EXPOSITION = """\
# HELP realtime_model_step_seconds One model step.
# TYPE realtime_model_step_seconds histogram
realtime_model_step_seconds_bucket{le="0.05",model_type="sft"} 3.0
realtime_model_step_seconds_bucket{le="+Inf",model_type="sft"} 4.0
realtime_model_step_seconds_count{model_type="sft"} 4.0
realtime_model_step_seconds_sum{model_type="sft"} 0.25
# HELP realtime_sessions_live Sessions open.
# TYPE realtime_sessions_live gauge
realtime_sessions_live 2.0
"""


def test_scrape_parses_every_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = []

    def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
        urls.append((url, timeout))
        return 200, EXPOSITION

    monkeypatch.setattr(scraping, "http_get", http_get)
    assert scraping.scrape("http://127.0.0.1:1") == {
        ("realtime_model_step_seconds_bucket", labels(le="0.05", model_type="sft")): 3.0,
        ("realtime_model_step_seconds_bucket", labels(le="+Inf", model_type="sft")): 4.0,
        ("realtime_model_step_seconds_count", labels(model_type="sft")): 4.0,
        ("realtime_model_step_seconds_sum", labels(model_type="sft")): 0.25,
        ("realtime_sessions_live", ()): 2.0,
    }
    assert urls == [("http://127.0.0.1:1/metrics", 10)]


def test_scrape_refuses_an_error_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scraping, "http_get", lambda url, timeout=5.0: (503, "draining"))
    with pytest.raises(RuntimeError, match="/metrics answered 503"):
        scraping.scrape("http://127.0.0.1:1")


# --- wait_for_idle: polling until no session and no step ---------------------------------------


def idle_samples(steps: float, live: float = 0.0) -> Samples:
    return {
        ("realtime_sessions_live", ()): live,
        ("realtime_model_step_seconds_count", labels(model_type="sft")): steps,
    }


def test_wait_for_idle_waits_for_the_steps_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([idle_samples(1, live=1), idle_samples(5), idle_samples(7), idle_samples(7)])
    monkeypatch.setattr(scraping, "scrape", lambda url: next(answers))
    assert scraping.wait_for_idle("http://127.0.0.1:1", timeout=10, quiet_s=0.0)
    assert next(answers, None) is None  # it needed the fourth scrape: the count stood still once


def test_wait_for_idle_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(url: str) -> Samples:
        raise OSError("refused")

    monkeypatch.setattr(scraping, "scrape", lambda url: idle_samples(0, live=1))
    assert not scraping.wait_for_idle("http://127.0.0.1:1", timeout=0.3, quiet_s=0.0)
    monkeypatch.setattr(scraping, "scrape", failing)  # a server that does not answer is not idle
    assert not scraping.wait_for_idle("http://127.0.0.1:1", timeout=0.3, quiet_s=0.0)


def test_wait_for_idle_with_its_own_scraper() -> None:
    answers = iter([idle_samples(3), idle_samples(3)])
    assert scraping.wait_for_idle("http://127.0.0.1:1", timeout=10, quiet_s=0.0, scraper=lambda url: next(answers))


# --- several workers behind one port -----------------------------------------------------------


def worker(start: float, steps: float, live: float = 0.0, stall_max: float = 0.0) -> Samples:
    return {
        ("process_start_time_seconds", ()): start,
        ("realtime_sessions_live", ()): live,
        ("realtime_event_loop_stall_max_seconds", ()): stall_max,
        ("step_bucket", labels(le="0.25", model_type="sft")): steps,
        ("step_bucket", labels(le="+Inf", model_type="sft")): steps,
        ("step_sum", labels(model_type="sft")): steps / 8,
        ("step_count", labels(model_type="sft")): steps,
        ("errors_total", labels(code="overflow")): 1.0,
    }


def test_max_of() -> None:
    assert max_of(AFTER, "slots") == 6.0
    assert max_of(AFTER, "slots", state="in_use") == 2.0
    assert max_of(AFTER, "missing") is None


def test_tag_process_and_process_key() -> None:
    tagged = tag_process({("x", labels(a="1")): 2.0, ("y", ()): 3.0}, "p1")
    assert tagged == {("x", labels(a="1", _process="p1")): 2.0, ("y", labels(_process="p1")): 3.0}
    assert processes_in(tagged) == {"p1"}
    assert processes_in({("y", ()): 1.0}) == {""}
    assert process_key(worker(100.5, 1)) == "100.5"
    assert process_key({("y", ()): 1.0}) is None
    assert PROCESS_LABEL == "_process"


def test_scrape_processes_until_every_worker_answered() -> None:
    answers = iter([worker(1.0, 2), worker(1.0, 3), worker(2.0, 4), worker(3.0, 5)])
    merged = scrape_processes("http://x", 2, scraper=lambda url: next(answers))
    assert processes_in(merged) == {"1.0", "2.0"}
    assert value_of(merged, "step_count") == 7.0  # the latest scrape of worker 1 (3) + worker 2 (4)
    assert value_of(merged, "realtime_sessions_live") == 0.0
    assert next(answers) == worker(3.0, 5)  # it stopped as soon as it had seen both


def test_scrape_processes_gives_up_after_six_tries_per_worker() -> None:
    calls = []

    def same(url: str) -> Samples:
        calls.append(url)
        return worker(1.0, 2)

    merged = scrape_processes("http://x", 2, scraper=same)
    assert len(calls) == 12 and processes_in(merged) == {"1.0"}


def test_scrape_processes_of_one_or_of_unknown_processes() -> None:
    assert processes_in(scrape_processes("http://x", 1, scraper=lambda url: worker(1.0, 2))) == {"1.0"}
    plain = {("step_count", labels(model_type="sft")): 4.0}
    assert scrape_processes("http://x", 3, scraper=lambda url: plain) == tag_process(plain, "")


def test_common_processes_leave_out_a_worker_seen_only_once() -> None:
    before = {**tag_process(worker(1.0, 2), "a")}
    after = {**tag_process(worker(1.0, 6), "a"), **tag_process(worker(2.0, 100), "b")}
    kept_before, kept_after = common_processes(before, after)
    assert kept_before == before and processes_in(kept_after) == {"a"}
    assert histogram_delta(kept_before, kept_after, "step")["count"] == 4.0


def test_per_worker_figures_are_summed_and_the_engine_step_is_taken_once() -> None:
    before = {**tag_process(worker(1.0, 2), "a"), **tag_process(worker(2.0, 2), "b")}
    after = {**tag_process(worker(1.0, 10, stall_max=0.5), "a"), **tag_process(worker(2.0, 6, stall_max=0.25), "b")}
    after[("errors_total", labels(code="overflow", _process="b"))] = 4.0
    assert histogram_delta(before, after, "step")["count"] == 12.0  # summed over the workers
    engine = engine_histogram_delta(before, after, "step", model_type="sft")
    assert (engine["count"], engine["mean"]) == (8.0, 0.125)  # the process that saw the most
    assert engine_histogram_delta({}, {}, "step")["count"] == 0.0
    assert counter_delta_by(before, after, "errors_total", "code") == {"overflow": 3.0}
    assert max_of(after, "realtime_event_loop_stall_max_seconds") == 0.5


def test_engine_histogram_delta_of_untagged_samples() -> None:
    assert engine_histogram_delta(BEFORE, AFTER, "step", model_type="sft")["count"] == 6.0


def test_histogram_label_values() -> None:
    after = {
        ("step_bucket", labels(le="0.25", model_type="sft", rows="8")): 1.0,
        ("step_bucket", labels(le="0.25", model_type="sft", rows="16", _process="a")): 1.0,
        ("step_count", labels(model_type="sft", rows="32")): 1.0,
    }
    assert histogram_label_values(after, "step", ignore=("model_type",)) == {"rows": {"8", "16"}}
    assert histogram_label_values(after, "step") == {"model_type": {"sft"}, "rows": {"8", "16"}}
    assert histogram_label_values({}, "step") == {}
