"""Per-reading operators as marble tests in virtual time (one tick = one second)."""

from __future__ import annotations

import asyncio
import time

from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.testing import ReactiveTest, TestScheduler

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading
from gateway.pipeline import operators
from gateway.pipeline.context import epoch_seconds, every
from gateway.pipeline.expressions import compile_expression
from gateway.pipeline.testing import emitted, reading, step_context, values

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error

AGGREGATE = Aggregate("p", "w", "d1", "m", 0.0, 10.0, 1, {"mean": 1.0})
ALERT = Alert("p", "t", "d1", "m", "threshold", "raised", "warning", 0.0, 1.0, 0.5, "x")


def test_epoch_seconds_of_test_scheduler_is_the_virtual_tick() -> None:
    scheduler = TestScheduler()
    scheduler.advance_to(210.5)
    assert epoch_seconds(scheduler) == 210.5


async def test_epoch_seconds_on_asyncio_scheduler_is_wall_clock() -> None:
    scheduler = AsyncIOScheduler(asyncio.get_running_loop())
    assert abs(epoch_seconds(scheduler) - time.time()) < 1.0


def test_every_ticks_until_disposed() -> None:
    scheduler = TestScheduler()
    ticks: list[float] = []
    ticker = every(scheduler, 2.5, lambda: ticks.append(epoch_seconds(scheduler)))
    scheduler.advance_to(10)
    ticker.dispose()
    scheduler.advance_to(20)
    assert ticks == [2.5, 5.0, 7.5, 10.0]


def test_filter_keeps_truthy_readings_and_passes_other_records() -> None:
    scheduler = TestScheduler()
    ctx = step_context(scheduler)
    op = operators.filter_readings(compile_expression("value > 2"), ctx)
    xs = scheduler.create_hot_observable(
        on_next(210, reading(1)),
        on_next(220, reading(3)),
        on_next(230, AGGREGATE),
        on_next(240, ALERT),
        on_next(250, reading(5)),
        on_completed(260),
    )
    observer = scheduler.start(lambda: op(xs))
    assert emitted(observer) == [
        (220.0, reading(3)),
        (230.0, AGGREGATE),
        (240.0, ALERT),
        (250.0, reading(5)),
    ]
    assert observer.messages[-1] == on_completed(260)
    assert ctx.counters.snapshot() == {}  # filtered readings are normal, not counted


def test_filter_is_total_a_raising_item_is_counted_and_dropped() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    ctx = step_context(scheduler, counters, pipeline="line", step="0:filter")
    op = operators.filter_readings(compile_expression("value / (value - 1) > 0"), ctx)
    xs = scheduler.create_hot_observable(
        on_next(210, reading(2)),
        on_next(220, reading(1)),  # ZeroDivisionError
        on_next(230, reading(3)),
        on_completed(240),
    )
    observer = scheduler.start(lambda: op(xs))
    assert values(observer) == [2, 3]
    assert observer.messages[-1] == on_completed(240)
    assert counters.get("line/0:filter", "error") == 1


def test_upstream_error_is_forwarded() -> None:
    scheduler = TestScheduler()
    op = operators.filter_readings(compile_expression("True"), step_context(scheduler))
    failure = RuntimeError("source broke")
    xs = scheduler.create_hot_observable(on_next(210, reading(1)), on_error(220, failure))
    observer = scheduler.start(lambda: op(xs))
    assert observer.messages[-1] == on_error(220, failure)


def test_map_replaces_value_and_counts_errors() -> None:
    scheduler = TestScheduler()
    ctx = step_context(scheduler)
    op = operators.map_value(compile_expression("value / 1000 if value else metric"), ctx)
    xs = scheduler.create_hot_observable(
        on_next(210, reading(1000, ts=5, seq=1)),
        on_next(220, reading(0)),  # float('m') raises
        on_next(230, reading(2500)),
        on_next(240, AGGREGATE),
    )
    observer = scheduler.start(lambda: op(xs))
    assert emitted(observer) == [
        (210.0, reading(1.0, ts=5, seq=1)),
        (230.0, reading(2.5)),
        (240.0, AGGREGATE),
    ]
    assert ctx.counters.get("p/s", "error") == 1


def test_scale_with_new_metric() -> None:
    scheduler = TestScheduler()
    op = operators.scale(1.8, 32.0, "temperature_f", step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(210, reading(0, metric="temperature")),
        on_next(220, reading(100, metric="temperature")),
    )
    observer = scheduler.start(lambda: op(xs))
    assert emitted(observer) == [
        (210.0, reading(32.0, metric="temperature_f")),
        (220.0, reading(212.0, metric="temperature_f")),
    ]


def test_scale_keeps_metric_when_not_given() -> None:
    scheduler = TestScheduler()
    op = operators.scale(2.0, 0.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(210, reading(4, metric="rh")))
    assert emitted(scheduler.start(lambda: op(xs))) == [(210.0, reading(8.0, metric="rh"))]


def test_rename_maps_listed_metrics_only() -> None:
    scheduler = TestScheduler()
    op = operators.rename({"temp": "temperature"}, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(210, reading(1, metric="temp")),
        on_next(220, reading(2, metric="rh")),
    )
    assert emitted(scheduler.start(lambda: op(xs))) == [
        (210.0, reading(1, metric="temperature")),
        (220.0, reading(2, metric="rh")),
    ]


def test_dedupe_by_seq_then_ts_and_bounded() -> None:
    scheduler = TestScheduler()
    ctx = step_context(scheduler)
    op = operators.dedupe(2, ctx)
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, seq=1)),
        on_next(202, reading(2, seq=2)),
        on_next(203, reading(1, seq=1)),  # duplicate
        on_next(204, reading(1, seq=1, device="d2")),  # another device: new
        on_next(205, reading(3, seq=3)),  # evicts the oldest keys (size 2)
        on_next(206, reading(2, seq=2)),  # forgotten: passes again
        on_next(207, reading(7, ts=50.0)),  # no seq: keyed by ts
        on_next(208, reading(8, ts=50.0)),  # duplicate by ts
        on_next(209, reading(9, ts=51.0)),
    )
    observer = scheduler.start(lambda: op(xs))
    assert values(observer) == [1, 2, 1, 3, 2, 7, 9]
    assert ctx.counters.get("p/s", "duplicate") == 2


def test_dedupe_does_not_confuse_seq_with_ts() -> None:
    scheduler = TestScheduler()
    op = operators.dedupe(10, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, seq=5, ts=0.0)),
        on_next(202, reading(2, seq=None, ts=5.0)),
    )
    assert values(scheduler.start(lambda: op(xs))) == [1, 2]


def test_distinct_until_changed_per_key_with_epsilon() -> None:
    scheduler = TestScheduler()
    op = operators.distinct_until_changed(0.5, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1)),
        on_next(202, reading(1.2)),
        on_next(203, reading(1.2, device="d2")),
        on_next(204, reading(2)),
        on_next(205, reading(2.4)),
        on_next(206, reading(1.5)),  # |1.5 - 2| <= 0.5: dropped
        on_next(207, reading(1)),
    )
    observer = scheduler.start(lambda: op(xs))
    assert [(r.device, r.value) for _, r in emitted(observer) if isinstance(r, Reading)] == [
        ("d1", 1),
        ("d2", 1.2),
        ("d1", 2),
        ("d1", 1),
    ]


def test_distinct_until_changed_default_epsilon_drops_exact_repeats() -> None:
    scheduler = TestScheduler()
    op = operators.distinct_until_changed(0.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1)), on_next(202, reading(1)), on_next(203, reading(1.001))
    )
    assert values(scheduler.start(lambda: op(xs))) == [1, 1.001]


def test_throttle_per_key_in_processing_time() -> None:
    scheduler = TestScheduler()
    op = operators.throttle(2.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1)),
        on_next(201.5, reading(2)),
        on_next(202, reading(3, device="d2")),
        on_next(202.9, reading(4)),
        on_next(203, reading(5)),  # 201 + 2: open again
        on_next(203.5, reading(6, device="d2")),
        on_next(204.5, reading(7, device="d2")),
    )
    observer = scheduler.start(lambda: op(xs))
    assert [(t, r.value) for t, r in emitted(observer) if isinstance(r, Reading)] == [
        (201.0, 1),
        (202.0, 3),
        (203.0, 5),
        (204.5, 7),
    ]


def test_sample_emits_latest_per_key_on_each_tick_and_flushes_on_completion() -> None:
    scheduler = TestScheduler()
    op = operators.sample(5.0, step_context(scheduler))  # subscribed at 200: ticks 205, 210, ...
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1)),
        on_next(202, reading(2, device="d2")),
        on_next(203, reading(3)),
        on_next(204, AGGREGATE),  # passes straight through
        on_next(207, reading(4)),
        on_next(218, reading(5)),  # nothing between 210 and 215: no emission at 215
        on_next(219, reading(6)),
        on_completed(222),
    )
    observer = scheduler.start(lambda: op(xs))
    assert [(t, getattr(r, "value", None), r.device) for t, r in emitted(observer)] == [
        (204.0, None, "d1"),
        (205.0, 3, "d1"),
        (205.0, 2, "d2"),
        (210.0, 4, "d1"),
        (220.0, 6, "d1"),
    ]
    assert observer.messages[-1] == on_completed(222)


def test_sample_flushes_pending_reading_on_completion() -> None:
    scheduler = TestScheduler()
    op = operators.sample(5.0, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(201, reading(1)), on_completed(203))
    observer = scheduler.start(lambda: op(xs))
    assert emitted(observer) == [(203.0, reading(1))]
    assert observer.messages[-1] == on_completed(203)
