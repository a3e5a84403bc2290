"""Threshold detection: one raise, one clear, hysteresis, ``for`` in event time."""

from __future__ import annotations

from reactivex.testing import ReactiveTest, TestScheduler

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading, Record
from gateway.pipeline import alerts
from gateway.pipeline.context import Operator
from gateway.pipeline.testing import emitted, reading, step_context

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed


def run(
    make: Operator, scheduler: TestScheduler, items: list[Record]
) -> list[tuple[float, Record]]:
    """Push ``items`` one second apart from t=201 and return what came out."""
    messages = [on_next(201 + i, item) for i, item in enumerate(items)]
    xs = scheduler.create_hot_observable(*messages, on_completed(201 + len(items)))
    return emitted(scheduler.start(lambda: make(xs)))


def transitions(out: list[tuple[float, Record]]) -> list[tuple[str, float, float]]:
    return [(r.state, r.ts, r.value) for _, r in out if isinstance(r, Alert)]


def test_above_with_hysteresis_raises_once_and_clears_once() -> None:
    scheduler = TestScheduler()
    ctx = step_context(scheduler, pipeline="line", step="overheat")
    op = alerts.threshold(80.0, None, 2.0, 0.0, "critical", "mean", ctx)
    values = [70, 81, 85, 90, 79, 80.5, 78.5, 78, 70, 81]
    items: list[Record] = [reading(v, ts=float(i)) for i, v in enumerate(values)]
    out = run(op, scheduler, items)
    assert transitions(out) == [
        ("raised", 1.0, 81.0),
        ("cleared", 7.0, 78.0),
        ("raised", 9.0, 81.0),
    ]
    raised = next(r for _, r in out if isinstance(r, Alert))
    assert raised == Alert(
        "line",
        "overheat",
        "d1",
        "m",
        "threshold",
        "raised",
        "critical",
        1.0,
        81.0,
        80.0,
        "d1 m = 81, above 80",
    )


def test_items_pass_through_and_alert_follows_its_trigger() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(80.0, None, 0.0, 0.0, "warning", "mean", step_context(scheduler))
    trigger = reading(85, ts=1.0)
    out = run(op, scheduler, [reading(70, ts=0.0), trigger])
    assert [r for _, r in out][:2] == [reading(70, ts=0.0), trigger]
    assert isinstance(out[2][1], Alert)
    assert out[1][0] == out[2][0] == 202.0


def test_for_duration_uses_event_time_and_resets_when_back_inside() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(80.0, None, 0.0, 30.0, "warning", "mean", step_context(scheduler))
    items: list[Record] = [
        reading(85, ts=0.0),
        reading(86, ts=20.0),
        reading(70, ts=25.0),  # back inside: the clock restarts
        reading(85, ts=30.0),
        reading(85, ts=50.0),
        reading(85, ts=59.0),  # 29 s beyond: not yet
        reading(85, ts=60.0),  # 30 s beyond: raise
        reading(95, ts=70.0),
        reading(60, ts=80.0),
    ]
    assert transitions(run(op, scheduler, items)) == [
        ("raised", 60.0, 85.0),
        ("cleared", 80.0, 60.0),
    ]


def test_below_limit_and_per_key_state() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(None, 10.0, 1.0, 0.0, "info", "mean", step_context(scheduler))
    items: list[Record] = [
        reading(9, ts=0.0, device="a"),
        reading(12, ts=0.0, device="b"),
        reading(10.5, ts=1.0, device="a"),  # inside, but not by more than hysteresis
        reading(5, ts=1.0, device="b"),
        reading(11, ts=2.0, device="a"),
    ]
    out = run(op, scheduler, items)
    assert [(r.device, r.state, r.threshold) for _, r in out if isinstance(r, Alert)] == [
        ("a", "raised", 10.0),
        ("b", "raised", 10.0),
        ("a", "cleared", 10.0),
    ]


def test_both_limits_report_the_crossed_one() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(80.0, 10.0, 0.0, 0.0, "warning", "mean", step_context(scheduler))
    items: list[Record] = [reading(5, ts=0.0), reading(50, ts=1.0), reading(90, ts=2.0)]
    out = run(op, scheduler, items)
    assert [(r.state, r.threshold, r.message) for _, r in out if isinstance(r, Alert)] == [
        ("raised", 10.0, "d1 m = 5, below 10"),
        ("cleared", 10.0, "d1 m = 50, back within 10"),
        ("raised", 80.0, "d1 m = 90, above 80"),
    ]


def test_aggregates_use_stat_and_end() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(80.0, None, 0.0, 0.0, "warning", "max", step_context(scheduler))
    hot = Aggregate("p", "w", "d1", "m", 0.0, 10.0, 3, {"mean": 50.0, "max": 90.0})
    out = run(op, scheduler, [hot])
    assert out[0][1] is hot
    assert transitions(out) == [("raised", 10.0, 90.0)]


def test_missing_stat_is_counted_and_the_item_still_passes() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = alerts.threshold(80.0, None, 0.0, 0.0, "warning", "p95", step_context(scheduler, counters))
    agg = Aggregate("p", "w", "d1", "m", 0.0, 10.0, 3, {"mean": 90.0})
    out = run(op, scheduler, [agg, reading(99, ts=1.0)])
    assert [r for _, r in out][:2] == [agg, reading(99, ts=1.0)]
    assert transitions(out) == [("raised", 1.0, 99.0)]
    assert counters.get("p/s", "error") == 1


def test_alerts_pass_through_unevaluated() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(0.0, None, 0.0, 0.0, "warning", "mean", step_context(scheduler))
    other = Alert("p", "x", "d1", "m", "threshold", "raised", "info", 0.0, 5.0, 1.0, "m")
    assert [r for _, r in run(op, scheduler, [other])] == [other]


def test_nan_never_raises() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(80.0, None, 0.0, 0.0, "warning", "mean", step_context(scheduler))
    assert transitions(run(op, scheduler, [reading(float("nan"), ts=0.0)])) == []


def test_reading_type_is_kept() -> None:
    scheduler = TestScheduler()
    op = alerts.threshold(80.0, None, 0.0, 0.0, "warning", "mean", step_context(scheduler))
    out = run(op, scheduler, [reading(1, ts=0.0)])
    assert [type(r) for _, r in out] == [Reading]
