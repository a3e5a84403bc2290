"""Event-time windows in virtual time: exact stats, closing, lateness, flush, sliding."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex.testing import ReactiveTest, TestScheduler

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading
from gateway.pipeline import windows
from gateway.pipeline.testing import emitted, reading, step_context

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error

ALERT = Alert("p", "t", "d1", "m", "threshold", "raised", "warning", 0.0, 1.0, 0.5, "x")


def aggregates(observer: object) -> list[tuple[float, Aggregate]]:
    return [(t, r) for t, r in emitted(observer) if isinstance(r, Aggregate)]  # type: ignore[arg-type]


def test_tumbling_window_exact_count_and_mean_emitted_at_end_plus_lateness() -> None:
    scheduler = TestScheduler()
    ctx = step_context(scheduler, pipeline="line", step="tenner")
    op = windows.window(10.0, None, ("count", "mean", "min", "max", "sum"), 2.0, ctx)
    xs = scheduler.create_hot_observable(
        on_next(200.5, reading(1, ts=200.0)),
        on_next(203.5, reading(2, ts=203.0)),
        on_next(209.5, reading(6, ts=209.9)),
        on_next(210.5, reading(100, ts=210.0)),  # next window
        on_next(211.5, reading(3, ts=209.0)),  # still in time: lateness 2s
    )
    observer = scheduler.start(lambda: op(xs))
    result = aggregates(observer)
    assert result[0] == (
        212.0,
        Aggregate(
            "line",
            "tenner",
            "d1",
            "m",
            200.0,
            210.0,
            4,
            {"count": 4.0, "mean": 3.0, "min": 1.0, "max": 6.0, "sum": 12.0},
        ),
    )
    assert result[1][0] == 222.0
    assert (result[1][1].start, result[1][1].count, result[1][1].stats["mean"]) == (210.0, 1, 100.0)
    assert not [r for _, r in emitted(observer) if isinstance(r, Reading)]  # readings are consumed


def test_windows_are_per_device_and_metric() -> None:
    scheduler = TestScheduler()
    op = windows.window(10.0, None, ("count", "mean"), 0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=201.0, device="a")),
        on_next(202, reading(3, ts=202.0, device="a")),
        on_next(203, reading(10, ts=203.0, device="b")),
        on_next(204, reading(20, ts=204.0, device="a", metric="rh")),
    )
    result = {
        (a.device, a.metric): (a.count, a.stats["mean"])
        for _, a in aggregates(scheduler.start(lambda: op(xs)))
    }
    assert result == {("a", "m"): (2, 2.0), ("b", "m"): (1, 10.0), ("a", "rh"): (1, 20.0)}


def test_late_reading_is_counted_and_dropped() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = windows.window(10.0, None, ("count",), 2.0, step_context(scheduler, counters))
    xs = scheduler.create_hot_observable(
        on_next(205, reading(1, ts=205.0)),
        on_next(213.5, reading(2, ts=209.0)),  # window [200, 210) closed at 212
        on_next(214, reading(3, ts=150.0)),  # long gone
        on_next(215, reading(4, ts=214.0)),
    )
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert [(t, a.start, a.count) for t, a in result] == [(212.0, 200.0, 1), (222.0, 210.0, 1)]
    assert counters.get("p/s", "late") == 2


def test_future_timestamp_is_counted_and_dropped() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = windows.window(10.0, None, ("count",), 0.0, step_context(scheduler, counters))
    xs = scheduler.create_hot_observable(
        on_next(205, reading(1, ts=205.0 + 301)),
        on_next(206, reading(2, ts=206.0 + 299)),  # within 300 s: accepted
        on_completed(210),
    )
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert [(a.start, a.count) for _, a in result] == [(500.0, 1)]
    assert counters.get("p/s", "future_ts") == 1


def test_open_windows_are_flushed_on_completion_then_completes() -> None:
    scheduler = TestScheduler()
    op = windows.window(60.0, None, ("count", "last"), 0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=201.0)),
        on_next(202, reading(2, ts=202.0, device="d2")),
        on_next(203, reading(3, ts=203.0)),
        on_completed(230),
    )
    observer = scheduler.start(lambda: op(xs))
    result = aggregates(observer)
    assert [(t, a.device, a.start, a.end, a.count, a.stats) for t, a in result] == [
        (230.0, "d1", 180.0, 240.0, 2, {"count": 2.0, "last": 3.0}),
        (230.0, "d2", 180.0, 240.0, 1, {"count": 1.0, "last": 2.0}),
    ]
    assert observer.messages[-1] == on_completed(230)


def test_error_is_forwarded_without_flush() -> None:
    scheduler = TestScheduler()
    op = windows.window(60.0, None, ("count",), 0.0, step_context(scheduler))
    failure = RuntimeError("x")
    xs = scheduler.create_hot_observable(on_next(201, reading(1, ts=201.0)), on_error(202, failure))
    observer = scheduler.start(lambda: op(xs))
    assert observer.messages == [on_error(202, failure)]


def test_sliding_windows_each_reading_joins_every_covering_window() -> None:
    scheduler = TestScheduler()
    op = windows.window(10.0, 5.0, ("count", "sum"), 0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=201.0)),  # [195, 205) and [200, 210)
        on_next(206, reading(2, ts=206.0)),  # [200, 210) and [205, 215)
        on_next(207, reading(4, ts=207.0)),  # [200, 210) and [205, 215)
        on_completed(230),
    )
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert [(t, a.start, a.end, a.count, a.stats["sum"]) for t, a in result] == [
        (205.0, 195.0, 205.0, 1, 1.0),
        (210.0, 200.0, 210.0, 3, 7.0),
        (215.0, 205.0, 215.0, 2, 6.0),
    ]


def test_sliding_window_reading_on_boundary() -> None:
    scheduler = TestScheduler()
    op = windows.window(10.0, 5.0, ("count",), 0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(201, reading(1, ts=210.0)), on_completed(202))
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert sorted((a.start, a.end) for _, a in result) == [(205.0, 215.0), (210.0, 220.0)]


def test_sliding_reading_partly_late_joins_only_open_windows() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = windows.window(10.0, 5.0, ("count",), 0.0, step_context(scheduler, counters))
    xs = scheduler.create_hot_observable(
        on_next(211.5, reading(1, ts=207.0)),  # [200, 210) closed, [205, 215) open
        on_completed(230),
    )
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert [(a.start, a.count) for _, a in result] == [(205.0, 1)]
    assert counters.get("p/s", "late") == 0


def test_percentiles_stddev_first_last() -> None:
    scheduler = TestScheduler()
    names = ("count", "stddev", "p50", "p95", "first", "last")
    op = windows.window(100.0, None, names, 0.0, step_context(scheduler))
    messages = [on_next(201 + i, reading(v, ts=201.0 + i)) for i, v in enumerate([4, 1, 3, 2, 5])]
    xs = scheduler.create_hot_observable(*messages, on_completed(250))
    [(_, aggregate)] = aggregates(scheduler.start(lambda: op(xs)))
    assert aggregate.stats["p50"] == 3.0
    assert aggregate.stats["p95"] == pytest.approx(4.8)
    assert aggregate.stats["stddev"] == pytest.approx(statistics.stdev([4, 1, 3, 2, 5]))
    assert (aggregate.stats["first"], aggregate.stats["last"]) == (4.0, 5.0)


def test_single_value_stddev_is_zero() -> None:
    acc = windows.Accumulator(keep_samples=True)
    acc.add(7.0, rng=random.Random(0))
    assert acc.stats(("stddev", "p50", "p95", "mean")) == {
        "stddev": 0.0,
        "p50": 7.0,
        "p95": 7.0,
        "mean": 7.0,
    }


def test_bad_value_is_counted_as_error() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = windows.window(10.0, None, ("count",), 0.0, step_context(scheduler, counters))
    bad = Reading("src", "d1", "m", "x", 201.0)  # type: ignore[arg-type]
    xs = scheduler.create_hot_observable(
        on_next(201, bad), on_next(202, reading(1, ts=202.0)), on_completed(203)
    )
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert [a.count for _, a in result] == [1]
    assert counters.get("p/s", "error") == 1


def test_other_records_pass_through() -> None:
    scheduler = TestScheduler()
    op = windows.window(10.0, None, ("count",), 0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(201, ALERT))
    assert emitted(scheduler.start(lambda: op(xs))) == [(201.0, ALERT)]


def test_ticker_stops_on_dispose() -> None:
    scheduler = TestScheduler()
    op = windows.window(10.0, None, ("count",), 0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(201, reading(1, ts=201.0)))
    scheduler.start(lambda: op(xs), disposed=205)
    assert scheduler.clock <= 1000  # start() returned: nothing left rescheduling itself


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=200))
def test_accumulator_matches_statistics_module(data: list[float]) -> None:
    acc = windows.Accumulator(keep_samples=True)
    rng = random.Random(0)
    for value in data:
        acc.add(value, rng)
    stats = acc.stats(("count", "mean", "min", "max", "sum", "stddev", "p50", "p95"))
    quantiles = statistics.quantiles(data, n=100, method="inclusive")
    assert stats["count"] == len(data)
    assert stats["min"] == min(data)
    assert stats["max"] == max(data)
    assert stats["sum"] == pytest.approx(math.fsum(data), abs=1e-6)
    assert stats["mean"] == pytest.approx(statistics.fmean(data), abs=1e-6)
    assert stats["stddev"] == pytest.approx(statistics.stdev(data), rel=1e-6, abs=1e-6)
    assert stats["p50"] == pytest.approx(quantiles[49], abs=1e-6)
    assert stats["p95"] == pytest.approx(quantiles[94], abs=1e-6)


def test_samples_are_bounded() -> None:
    acc = windows.Accumulator(keep_samples=True)
    rng = random.Random(0)
    for i in range(windows.MAX_SAMPLES * 3):
        acc.add(float(i), rng)
    assert acc.samples is not None
    assert len(acc.samples) == windows.MAX_SAMPLES
    assert acc.count == windows.MAX_SAMPLES * 3
    assert 0.4 < acc.stats(("p50",))["p50"] / (windows.MAX_SAMPLES * 3) < 0.6


def test_no_samples_kept_without_percentiles() -> None:
    assert windows.Accumulator(keep_samples=False).samples is None


def test_window_closes_on_its_deadline_between_whole_seconds() -> None:
    # Ticks are aligned to end + lateness (here x.5 s), not to the subscription time:
    # an aggregate leaves when its window closes, not up to a tick period later.
    scheduler = TestScheduler()
    op = windows.window(10.0, None, ("count",), 0.5, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(201, reading(1, ts=201.0)))
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert [(t, a.start, a.count) for t, a in result] == [(210.5, 200.0, 1)]


def test_a_slide_that_is_not_a_whole_second_still_closes_on_its_deadline() -> None:
    """1.5 s tumbling windows: ticks every 0.75 s fall on every close (with ticks every
    whole second, [201, 202.5) would have waited until 203)."""
    scheduler = TestScheduler()
    op = windows.window(1.5, None, ("count",), 0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=201.0)), on_next(203, reading(1, ts=203.0))
    )
    result = aggregates(scheduler.start(lambda: op(xs)))
    assert [(t, a.start, a.count) for t, a in result] == [(202.5, 201.0, 1), (204.0, 202.5, 1)]


@pytest.mark.parametrize(("slide", "period"), [(0.25, 0.25), (1.0, 1.0), (1.5, 0.75), (10.0, 1.0)])
def test_the_tick_period_divides_the_slide_and_is_at_most_a_second(
    slide: float, period: float
) -> None:
    assert windows.tick_period(slide) == period
