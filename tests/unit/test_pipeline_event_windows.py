"""Event-time windows: per-key watermark, allowed lateness, late side output, replay == live."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from reactivex.testing import ReactiveTest, TestScheduler

from gateway.counters import Counters
from gateway.model import Aggregate, Message, Reading, Record
from gateway.pipeline import windows
from gateway.pipeline.steps import Step
from gateway.pipeline.testing import emitted, reading, step_context

STEPS: TypeAdapter[list[Step]] = TypeAdapter(list[Step])
on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed


def summary(out: list[tuple[float, Record]]) -> list[tuple[str, float, int, float]]:
    return sorted(
        (r.device, r.start, r.count, r.stats["mean"]) for _, r in out if isinstance(r, Aggregate)
    )


def test_watermark_closes_windows_and_late_readings_go_to_the_side_output() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    ctx = step_context(scheduler, counters, pipeline="line", step="tens")
    op = windows.event_window(10.0, None, ("count", "mean"), 2.0, "late/{device}", ctx)
    items = [(0, 1), (3, 2), (9, 3), (11, 4), (12, 5), (8, 6), (25, 7)]
    xs = scheduler.create_hot_observable(
        *[on_next(201 + i, reading(v, ts=float(ts))) for i, (ts, v) in enumerate(items)],
        on_completed(210),
    )
    out = emitted(scheduler.start(lambda: op(xs)))
    shapes = [
        (t, type(r).__name__, getattr(r, "start", None), getattr(r, "count", None)) for t, r in out
    ]
    assert shapes == [
        (205.0, "Aggregate", 0.0, 3),  # emitted when ts 12 arrives: watermark 10
        (206.0, "Message", None, None),  # 8:6 is late
        (207.0, "Aggregate", 10.0, 2),  # watermark 23 passes 20
        (210.0, "Aggregate", 20.0, 1),  # flushed at completion
    ]
    late = out[1][1]
    assert isinstance(late, Message)
    assert (late.kind, late.topic, late.ts) == ("late", "late/{device}", 8.0)
    assert late.body == {"source": "src", "value": 6.0, "seq": None, "watermark": 10.0}
    assert counters.get("line/tens", "late") == 1


def test_without_a_late_topic_late_readings_still_come_out_for_the_store() -> None:
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 0.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=15.0)), on_next(202, reading(2, ts=3.0)), on_completed(210)
    )
    out = emitted(scheduler.start(lambda: op(xs)))
    [late] = [r for _, r in out if isinstance(r, Message)]
    assert (late.kind, late.topic, late.ts) == ("late", None, 3.0)


def test_processing_time_windows_judge_by_the_gateway_clock() -> None:
    """The same old reading: accepted by event time (its device's own clock), late by the
    gateway's clock in processing time."""
    for mode, expected in (("event", [(0.0, 1)]), ("processing", [])):
        scheduler = TestScheduler()
        [step] = STEPS.validate_python([{"window": {"size": "10s", "time": mode}}])
        op = step.build(step_context(scheduler))
        xs = scheduler.create_hot_observable(on_next(201, reading(1, ts=5.0)), on_completed(210))
        out = emitted(scheduler.start(lambda: op(xs)))  # noqa: B023
        assert [(r.start, r.count) for _, r in out if isinstance(r, Aggregate)] == expected


def test_a_reading_within_the_allowed_lateness_still_counts() -> None:
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 5.0, None, step_context(scheduler))
    values = [(0, 1), (12, 2), (9, 3), (15, 4)]
    xs = scheduler.create_hot_observable(
        *[on_next(201 + i, reading(v, ts=float(ts))) for i, (ts, v) in enumerate(values)],
        on_completed(210),
    )
    out = emitted(scheduler.start(lambda: op(xs)))
    assert [(r.start, r.count) for _, r in out if isinstance(r, Aggregate)] == [
        (0.0, 2),
        (10.0, 2),
    ]


def test_an_idle_device_gets_its_last_window_by_the_processing_clock() -> None:
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(203, reading(1, ts=5000.0)), on_completed(400))
    out = emitted(scheduler.start(lambda: op(xs)))
    [(when, agg)] = out
    assert isinstance(agg, Aggregate)
    assert agg.start == 5000.0
    assert 210 <= when <= 220  # 7 s idle (to 5012) noticed on a 10 s tick, before completion


def test_sliding_event_windows_each_reading_joins_every_covering_window() -> None:
    scheduler = TestScheduler()
    op = windows.event_window(10.0, 5.0, ("count",), 0.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=7.0)), on_next(202, reading(1, ts=12.0)), on_completed(210)
    )
    out = emitted(scheduler.start(lambda: op(xs)))
    assert [(r.start, r.count) for _, r in out if isinstance(r, Aggregate)] == [
        (0.0, 1),
        (5.0, 2),
        (10.0, 1),
    ]


def run_both_ways(readings: list[Reading]) -> tuple[list[object], list[object]]:
    """The same readings live (arriving at their own ts) and replayed (all in one instant)."""
    live_scheduler = TestScheduler()
    op = windows.event_window(
        10.0, None, ("count", "mean"), 2.0, None, step_context(live_scheduler)
    )
    live = live_scheduler.create_hot_observable(
        *[on_next(int(r.ts) + 201, r) for r in readings],
        on_completed(int(max(r.ts for r in readings)) + 300),
    )
    live_out = emitted(live_scheduler.start(lambda: op(live), disposed=100_000))
    fast_scheduler = TestScheduler()
    op = windows.event_window(
        10.0, None, ("count", "mean"), 2.0, None, step_context(fast_scheduler)
    )
    fast = fast_scheduler.create_hot_observable(
        *[on_next(201, r) for r in readings], on_completed(202)
    )
    fast_out = emitted(fast_scheduler.start(lambda: op(fast)))
    return summary(live_out), summary(fast_out)  # type: ignore[return-value]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 120)), min_size=1, max_size=60))
def test_full_speed_replay_gives_the_live_aggregates(points: list[tuple[int, int]]) -> None:
    by_device: dict[int, list[int]] = {}
    for device, ts in points:
        by_device.setdefault(device, []).append(ts)
    readings = sorted(
        (
            reading(float(ts % 7), ts=float(ts), device=f"d{d}")
            for d, stamps in by_device.items()
            for ts in sorted(set(stamps))
        ),
        key=lambda r: r.ts,
    )
    live, fast = run_both_ways(readings)
    assert live == fast


def test_device_interleaving_does_not_change_the_result() -> None:
    rng = random.Random(3)
    per_device = {
        d: [reading(rng.random(), ts=float(t), device=d) for t in range(0, 100, 3)]
        for d in ("a", "b", "c")
    }
    results = []
    for seed in range(3):
        shuffle = random.Random(seed)
        queues = {d: list(rs) for d, rs in per_device.items()}
        order: list[Reading] = []
        while any(queues.values()):
            d = shuffle.choice([k for k, q in queues.items() if q])
            order.append(queues[d].pop(0))
        scheduler = TestScheduler()
        op = windows.event_window(10.0, None, ("count", "mean"), 0.0, None, step_context(scheduler))
        xs = scheduler.create_hot_observable(
            *[on_next(201 + i // 50, r) for i, r in enumerate(order)], on_completed(300)
        )
        results.append(summary(emitted(scheduler.start(lambda: op(xs)))))  # noqa: B023
    assert results[0] == results[1] == results[2]


def test_a_backlog_sent_after_an_outage_lands_in_its_own_windows() -> None:
    """Store-and-forward: a device offline for 100 s sends its buffered readings on return."""
    scheduler = TestScheduler()
    counters = Counters()
    ctx = step_context(scheduler, counters, step="w")
    op = windows.event_window(10.0, None, ("count",), 2.0, None, ctx)
    live = [on_next(201 + t, reading(1, ts=float(t))) for t in range(6)]
    backlog = [on_next(310, reading(1, ts=float(t))) for t in range(6, 100)]
    xs = scheduler.create_hot_observable(*live, *backlog, on_completed(320))
    out = emitted(scheduler.start(lambda: op(xs)))
    got = [(r.start, r.count) for _, r in out if isinstance(r, Aggregate)]
    assert got[0] == (0.0, 6)  # emitted while the device was away
    assert got[1:] == [(float(start), 10) for start in range(10, 100, 10)]
    assert counters.get("p/w", "late") == 4  # ts 6..9 belonged to the window already emitted
