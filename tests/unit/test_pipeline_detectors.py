"""Detector steps in virtual time: each kind, and the raise -> clear -> cooldown lifecycle."""

from __future__ import annotations

import math
import random
import statistics
from array import array
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from reactivex.testing import ReactiveTest, TestScheduler

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Message, Reading, Record
from gateway.pipeline.context import Operator
from gateway.pipeline.scorers import (
    AnomalyScorer,
    BlockMemory,
    OrderedWindow,
    SeasonalProfile,
)
from gateway.pipeline.steps import Step
from gateway.pipeline.testing import emitted, reading, step_context

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
STEPS: TypeAdapter[list[Step]] = TypeAdapter(list[Step])


def build(
    spec: dict[str, Any], scheduler: TestScheduler, counters: Counters | None = None
) -> Operator:
    """Build one step from its YAML shape, as a config file would."""
    [step] = STEPS.validate_python([spec])
    return step.build(step_context(scheduler, counters, pipeline="line", step=step.id or "det"))


def run(op: Operator, scheduler: TestScheduler, items: list[Record]) -> list[tuple[float, Record]]:
    """Push ``items`` one virtual second apart from t=201; what came out."""
    messages = [on_next(201 + i, item) for i, item in enumerate(items)]
    xs = scheduler.create_hot_observable(*messages, on_completed(201 + len(items)))
    return emitted(scheduler.start(lambda: op(xs), disposed=10_000_000))


def alerts(out: list[tuple[float, Record]]) -> list[Alert]:
    return [r for _, r in out if isinstance(r, Alert)]


def transitions(out: list[tuple[float, Record]]) -> list[tuple[str, float, float]]:
    return [(a.state, a.ts, a.value) for a in alerts(out)]


def series(values: list[float], start: float = 0.0, step: float = 1.0, **kw: Any) -> list[Record]:
    return [reading(v, ts=start + i * step, **kw) for i, v in enumerate(values)]


def noise(n: int, seed: int = 1, mean: float = 20.0, std: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, std) for _ in range(n)]


def test_range_raises_one_critical_alert_with_its_record_then_clears() -> None:
    scheduler = TestScheduler()
    op = build({"range": {"min": -40, "max": 125}, "id": "probe"}, scheduler)
    out = run(op, scheduler, series([20, 21, 500, 600, 22, 23]))
    assert transitions(out) == [("raised", 2.0, 500.0), ("cleared", 4.0, 22.0)]
    raised = alerts(out)[0]
    assert (raised.pipeline, raised.step, raised.kind, raised.severity) == (
        "line",
        "probe",
        "range",
        "critical",
    )
    assert (raised.threshold, raised.score) == (125.0, 375.0)
    assert raised.evidence == {"low": -40.0, "high": 125.0}
    assert raised.message == "d1 m = 500: outside the possible range [-40, 125]"
    assert [r for _, r in out if isinstance(r, Reading)] == series([20, 21, 500, 600, 22, 23])


def test_cooldown_turns_a_flapping_sensor_into_one_alert() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = build({"range": {"min": 0, "max": 100, "cooldown": "1h"}}, scheduler, counters)
    flapping = [200.0 if i % 2 else 50.0 for i in range(1000)]  # 10 s apart: 2.8 hours
    out = run(op, scheduler, series(flapping, step=10.0))
    raised = [a for a in alerts(out) if a.state == "raised"]
    assert [a.ts for a in raised] == [10.0, 3610.0, 7210.0]
    assert counters.get("line/det", "suppressed") == 500 - 3


def test_clear_after_needs_that_many_normal_readings_in_a_row() -> None:
    scheduler = TestScheduler()
    op = build({"range": {"min": 0, "max": 100, "clear_after": 3}}, scheduler)
    out = run(op, scheduler, series([50, 200, 50, 50, 200, 50, 50, 50, 50]))
    assert transitions(out) == [("raised", 1.0, 200.0), ("cleared", 7.0, 50.0)]


def test_for_raises_only_after_the_anomaly_lasted_that_long_in_event_time() -> None:
    scheduler = TestScheduler()
    op = build({"range": {"min": 0, "max": 100, "for": "30s"}}, scheduler)
    values = [200, 200, 50, 200, 200, 200, 200]  # 10 s apart
    out = run(op, scheduler, series(values, step=10.0))
    assert transitions(out) == [("raised", 60.0, 200.0)]


def test_rate_of_change_per_minute() -> None:
    scheduler = TestScheduler()
    op = build({"rate_of_change": {"max": 5, "per": "1m"}}, scheduler)
    # 10 s apart: +0.5 per step is 3/min, +2 per step is 12/min
    values = [20, 20.5, 21, 23, 25, 25.5]
    out = run(op, scheduler, series(values, step=10.0))
    assert transitions(out) == [("raised", 30.0, 23.0), ("cleared", 50.0, 25.5)]
    assert alerts(out)[0].score == pytest.approx(12.0)


def test_zscore_catches_a_jump_but_not_the_noise_around_it() -> None:
    scheduler = TestScheduler()
    op = build({"zscore": {"window": 50, "limit": 5, "min_count": 30}}, scheduler)
    values = [*noise(200), 40.0, *noise(5, seed=2)]
    out = run(op, scheduler, series(values))
    assert transitions(out) == [("raised", 200.0, 40.0), ("cleared", 201.0, values[201])]
    evidence = alerts(out)[0].evidence
    assert evidence["mean"] == pytest.approx(20.0, abs=0.6)
    assert evidence["std"] == pytest.approx(1.0, abs=0.3)


def test_ewma_learns_a_new_level_and_goes_quiet() -> None:
    scheduler = TestScheduler()
    op = build({"ewma": {"alpha": 0.1, "limit": 4, "min_count": 20}}, scheduler)
    values = [*noise(100), *noise(200, seed=3, mean=30.0)]
    out = run(op, scheduler, series(values))
    raised = [a for a in alerts(out) if a.state == "raised"]
    assert [a.ts for a in raised] == [100.0]


def test_mad_is_not_blinded_by_earlier_outliers() -> None:
    """One huge outlier inflates a plain std for a whole window; the median and MAD shrug."""
    values = [*noise(100), 1000.0, *noise(20, seed=4), 27.0]
    scheduler = TestScheduler()
    mad = run(build({"mad": {"window": 100, "limit": 5}}, scheduler), scheduler, series(values))
    scheduler = TestScheduler()
    z = run(build({"zscore": {"window": 100, "limit": 5}}, scheduler), scheduler, series(values))
    assert [a.ts for a in alerts(mad) if a.state == "raised"] == [100.0, 121.0]
    assert [a.ts for a in alerts(z) if a.state == "raised"] == [100.0]


def test_cusum_finds_a_slow_drift_that_no_single_reading_gives_away() -> None:
    drift = [v + 0.02 * i for i, v in enumerate(noise(200, seed=5))]  # +4 sigma over 200
    values = [*noise(100), *drift]
    scheduler = TestScheduler()
    out = run(
        build({"cusum": {"k": 0.5, "h": 8, "warmup": 100}}, scheduler), scheduler, series(values)
    )
    raised = [a for a in alerts(out) if a.state == "raised"]
    assert raised
    assert 100 < raised[0].ts < 200
    assert "drifting up" in raised[0].message
    scheduler = TestScheduler()
    quiet = run(build({"cusum": {"warmup": 100}}, scheduler), scheduler, series(noise(300)))
    assert alerts(quiet) == []


def test_page_hinkley_reports_a_level_shift_once_then_learns_the_new_level() -> None:
    values = [*noise(100), *noise(300, seed=2, mean=23.0)]
    scheduler = TestScheduler()
    out = run(build({"page_hinkley": {"warmup": 50}}, scheduler), scheduler, series(values))
    raised = [a for a in alerts(out) if a.state == "raised"]
    assert len(raised) == 1  # cusum, whose baseline stays put, would report it again and again
    assert 100 <= raised[0].ts < 110
    assert "drifting up from the mean" in raised[0].message
    assert raised[0].evidence["page_hinkley"] > 20


def test_page_hinkley_finds_a_slow_drift_down_and_stays_quiet_on_noise() -> None:
    drift = [v - 0.02 * i for i, v in enumerate(noise(200, seed=5))]  # -4 sigma over 200
    scheduler = TestScheduler()
    op = build({"page_hinkley": {"delta": 0.5, "threshold": 20, "warmup": 100}}, scheduler)
    raised = [
        a for a in alerts(run(op, scheduler, series([*noise(100), *drift]))) if a.state == "raised"
    ]
    assert raised
    assert 150 < raised[0].ts < 200
    assert "drifting down from the mean" in raised[0].message
    scheduler = TestScheduler()
    quiet = run(build({"page_hinkley": None}, scheduler), scheduler, series(noise(2000, seed=3)))
    assert alerts(quiet) == []


def test_stuck_by_count_and_by_duration() -> None:
    values = [1, 2, 3, 5, 5, 5.05, 5, 5, 6]
    scheduler = TestScheduler()
    by_count = build({"stuck": {"epsilon": 0.1, "count": 4}}, scheduler)
    assert transitions(run(by_count, scheduler, series(values))) == [
        ("raised", 6.0, 5.0),
        ("cleared", 8.0, 6.0),
    ]
    scheduler = TestScheduler()
    by_time = build({"stuck": {"epsilon": 0.1, "duration": "2m"}}, scheduler)
    out = run(by_time, scheduler, series(values, step=30.0))
    assert transitions(out) == [("raised", 210.0, 5.0), ("cleared", 240.0, 6.0)]


def test_spike_reports_the_outlier_with_its_own_time_but_not_a_level_shift() -> None:
    scheduler = TestScheduler()
    op = build({"spike": {"window": 50, "limit": 6, "min_count": 20}}, scheduler)
    values = [*noise(60), 45.0, *noise(10, seed=6), *[40.0 + x for x in noise(10, seed=7)]]
    out = run(op, scheduler, series(values))
    raised = [a for a in alerts(out) if a.state == "raised"]
    assert [(a.ts, a.value) for a in raised] == [(60.0, 45.0)]
    # the alert follows the reading after the spike
    position = next(i for i, (_, r) in enumerate(out) if isinstance(r, Alert))
    assert out[position - 1][1] == reading(values[61], ts=61.0)


def test_silence_in_event_time_follows_the_watermark_and_clears_on_return() -> None:
    scheduler = TestScheduler()
    op = build({"silence": {"after": "30s"}}, scheduler)
    items: list[Record] = [
        reading(1, ts=0.0, device="a"),
        reading(1, ts=0.0, device="b"),
        reading(1, ts=20.0, device="b"),
        reading(1, ts=35.0, device="b"),  # watermark 35: a silent since 0 for 30 s
        reading(1, ts=60.0, device="b"),
        reading(1, ts=70.0, device="a"),  # a is back
    ]
    out = run(op, scheduler, items)
    assert [(a.device, a.state, a.ts) for a in alerts(out)] == [
        ("a", "raised", 30.0),
        ("a", "cleared", 70.0),
    ]
    assert alerts(out)[0].evidence == {"last_seen": 0.0}


def test_silence_notices_a_whole_fleet_going_quiet_by_the_processing_clock() -> None:
    scheduler = TestScheduler()
    op = build({"silence": {"after": "20s"}}, scheduler)
    xs = scheduler.create_hot_observable(
        on_next(210, reading(1, ts=1000.0, device="a")), on_completed(400)
    )
    out = emitted(scheduler.start(lambda: op(xs)))
    [(when, raised)] = [(t, r) for t, r in out if isinstance(r, Alert)]
    assert isinstance(raised, Alert)
    assert (raised.state, raised.ts) == ("raised", 1020.0)  # event time, not wall time
    assert 230 <= when <= 236  # noticed on the tick after 20 s of processing time


def test_silence_in_processing_time_uses_arrival() -> None:
    scheduler = TestScheduler()
    op = build({"silence": {"after": "10s", "time": "processing"}}, scheduler)
    xs = scheduler.create_hot_observable(
        on_next(205, reading(1, ts=0.0)), on_next(230, reading(1, ts=1.0)), on_completed(240)
    )
    out = emitted(scheduler.start(lambda: op(xs)))
    assert [(a.state, a.ts) for _, a in out if isinstance(a, Alert)] == [
        ("raised", 215.0),
        ("cleared", 230.0),
    ]


def test_detectors_keep_state_per_device_and_metric() -> None:
    scheduler = TestScheduler()
    op = build({"range": {"min": 0, "max": 10}}, scheduler)
    items: list[Record] = [
        reading(50, ts=0.0, device="a"),
        reading(50, ts=0.0, device="b"),
        reading(50, ts=0.0, device="a", metric="other"),
        reading(5, ts=1.0, device="b"),
    ]
    out = run(op, scheduler, items)
    assert [(a.device, a.metric, a.state) for a in alerts(out)] == [
        ("a", "m", "raised"),
        ("b", "m", "raised"),
        ("a", "other", "raised"),
        ("b", "m", "cleared"),
    ]


def test_max_keys_evicts_the_least_recently_seen_key_and_counts_it() -> None:
    scheduler, counters = TestScheduler(), Counters()
    op = build({"range": {"min": 0, "max": 10, "max_keys": 2}}, scheduler, counters)
    items: list[Record] = [
        reading(50, ts=0.0, device="a"),  # a raised
        reading(50, ts=0.0, device="b"),  # b raised
        reading(50, ts=1.0, device="a"),  # a seen again: b is now the least recent
        reading(50, ts=1.0, device="c"),  # c raised, b evicted
        reading(5, ts=2.0, device="a"),  # a cleared: its state was kept
        reading(50, ts=2.0, device="b"),  # b starts over: raised again, c evicted
    ]
    out = run(op, scheduler, items)
    assert [(a.device, a.state) for a in alerts(out)] == [
        ("a", "raised"),
        ("b", "raised"),
        ("c", "raised"),
        ("a", "cleared"),
        ("b", "raised"),
    ]
    assert counters.get("line/det", "evicted") == 2


def test_aggregates_are_scored_on_stat_and_a_missing_stat_is_counted() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = build({"range": {"min": 0, "max": 10, "stat": "max"}}, scheduler, counters)
    hot = Aggregate("p", "w", "d1", "m", 0.0, 60.0, 3, {"mean": 5.0, "max": 50.0})
    broken = Aggregate("p", "w", "d1", "m", 60.0, 120.0, 3, {"mean": 5.0})
    out = run(op, scheduler, [hot, broken])
    assert [r for _, r in out if isinstance(r, Aggregate)] == [hot, broken]
    assert transitions(out) == [("raised", 60.0, 50.0)]
    assert counters.get("line/det", "error") == 1


def test_non_finite_values_are_counted_never_alerted() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    op = build({"range": {"min": 0, "max": 10}}, scheduler, counters)
    out = run(op, scheduler, series([math.nan, math.inf, 5]))
    assert alerts(out) == []
    assert counters.get("line/det", "non_finite") == 2


def test_anomaly_default_finds_a_missing_daily_cycle_and_stays_quiet_on_a_normal_one() -> None:
    def day_curve(i: int) -> float:
        return 20 + 10 * math.sin(2 * math.pi * (i % 288) / 288)

    rng = random.Random(8)
    normal = [day_curve(i) + rng.gauss(0, 0.3) for i in range(288 * 8)]
    broken = list(normal)
    for i in range(288 * 6, 288 * 6 + 144):  # half a day flat at the daily mean
        broken[i] = 20 + rng.gauss(0, 0.3)
    found = []
    for values in (normal, broken):
        scheduler = TestScheduler()
        op = build({"anomaly": None}, scheduler)
        out = run(op, scheduler, series(values, step=300.0))
        found.append([round(a.ts / 300) for a in alerts(out) if a.state == "raised"])
    assert found[0] == []
    [index] = found[1]
    # within 90 minutes of the cycle going missing: the gap grows from 0, then must persist
    assert 288 * 6 <= index < 288 * 6 + 18


def test_anomaly_default_ignores_a_daily_burst_it_has_seen_and_reports_a_new_one() -> None:
    rng = random.Random(3)
    values = [1.0 + rng.gauss(0, 0.05) for _ in range(288 * 8)]
    for day in range(8):
        values[288 * day + 36] = 10.0 + rng.gauss(0, 0.2)  # 03:00 every day: a routine job
    values[288 * 6 + 180] = 20.0  # 15:00 on day 6: twice the routine burst, at another time
    scheduler = TestScheduler()
    out = run(build({"anomaly": None}, scheduler), scheduler, series(values, step=300.0))
    assert [a.ts / 300 for a in alerts(out) if a.state == "raised"] == [288 * 6 + 180]


def test_anomaly_default_learns_a_new_level_and_still_sees_a_spike_on_it() -> None:
    values = [*noise(288 * 3, seed=4, mean=10.0), *noise(288 * 3, seed=5, mean=20.0)]
    values[288 * 5] = 27.0  # 7 sigmas above the new level, a day and a half later
    scheduler = TestScheduler()
    out = run(build({"anomaly": None}, scheduler), scheduler, series(values, step=300.0))
    raised = [round(a.ts / 300) for a in alerts(out) if a.state == "raised"]
    assert raised == [288 * 3, 288 * 5]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"range": {"min": 5, "max": 1}}, "min must be less than max"),
        ({"stuck": {"epsilon": 0.1}}, "set count, duration or both"),
        ({"zscore": {"window": 1}}, "greater than or equal to 2"),
        ({"ewma": {"alpha": 1.5}}, "less than 1"),
        ({"rate_of_change": {"max": 5, "per": "0s"}}, "greater than 0"),
        ({"silence": {"after": "10s", "time": "wall"}}, "'event' or 'processing'"),
        ({"mad": {"limit": 3, "colour": "red"}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_detector_parameters_fail_at_load(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        STEPS.validate_python([spec])
    assert message in str(info.value)


def test_action_publishes_a_templated_message_after_a_matching_alert() -> None:
    scheduler = TestScheduler()
    detector = build({"range": {"min": 0, "max": 100}, "id": "probe"}, scheduler)
    order = build(
        {
            "action": {
                "topic": "plant/{gateway}/maintenance/{device}",
                "payload": {"order": "probe for {device}", "why": "{message}"},
                "kinds": ["range"],
            }
        },
        scheduler,
    )
    out = run(lambda xs: order(detector(xs)), scheduler, series([50, 500, 50, 700]))
    messages = [r for _, r in out if isinstance(r, Message)]
    assert len(messages) == 2  # raised twice (no cooldown), never on the clear
    first = messages[0]
    assert (first.kind, first.topic, first.ts) == (
        "action",
        "plant/{gateway}/maintenance/{device}",
        1.0,
    )
    assert first.body["order"] == "probe for d1"
    assert first.body["why"] == "d1 m = 500: outside the possible range [0, 100]"
    assert first.body["trigger"] == {
        "step": "probe",
        "kind": "range",
        "severity": "critical",
        "state": "raised",
        "ts": 1.0,
        "value": 500.0,
    }
    kinds = [type(r).__name__ for _, r in out]
    assert kinds[:4] == ["Reading", "Reading", "Alert", "Message"]


@pytest.mark.parametrize(
    "payload", [{"x": "{device.__class__}"}, {"x": "{secret}"}, {"x": "{value!r}"}, {"x": "{"}]
)
def test_action_templates_are_checked_at_load(payload: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        STEPS.validate_python([{"action": {"topic": "a/b", "payload": payload}}])


@pytest.mark.parametrize("size", [7, 5000])
def test_ordered_window_quantiles_are_exact_for_both_storages(size: int) -> None:
    rng = random.Random(size)
    window = OrderedWindow(size)
    values = [rng.choice([rng.gauss(0, 1), 1.0]) for _ in range(size * 3)]
    for v in values:
        window.add(v)
    recent = sorted(values[-size:])
    assert len(window) == size
    assert window.quantile(0.5) == pytest.approx(statistics.median(recent))
    assert window.quantile(0.0) == recent[0]
    assert window.quantile(1.0) == recent[-1]
    assert window.latest(3) == values[-3:]
    assert window.latest(size) == values[-size:]


def test_ordered_window_latest_before_the_ring_is_full() -> None:
    window = OrderedWindow(10)
    for v in (1.0, 2.0, 3.0):
        window.add(v)
    assert window.latest(2) == [2.0, 3.0]
    assert window.latest(0) == []


def test_a_float32_window_keeps_values_rounded_and_evicts_them_exactly() -> None:
    rng = random.Random(3)
    window = OrderedWindow(50, "f")
    values = [rng.gauss(20, 3) for _ in range(400)]
    for v in values:
        window.add(v)
    rounded = sorted(array("f", values[-50:]))
    assert list(window.sorted) == rounded
    assert window.quantile(0.5) == pytest.approx(statistics.median(values[-50:]), rel=1e-6)


def test_a_full_window_returns_the_value_it_evicts() -> None:
    window = OrderedWindow(3, "f")
    assert [window.add(v) for v in (1.0, 2.0, 3.0, 4.0, 5.0)] == [None, None, None, 1.0, 2.0]
    assert list(window.sorted) == [3.0, 4.0, 5.0]


def test_a_block_memory_knows_what_the_values_it_remembers_know() -> None:
    rng = random.Random(6)
    memory = BlockMemory(blocks=20, block=8)
    values = [rng.choice([rng.gauss(0, 1), rng.gauss(10, 3)]) for _ in range(1000)]
    for v in values:
        memory.add(v)
    remembered = values[-(20 * 8 + 1000 % 8) :]  # 20 full blocks and the one being filled
    forgotten = values[: -len(remembered)]
    checked = 0
    for _ in range(2000):
        query, gap = rng.uniform(-5, 25), rng.uniform(0.1, 2.0)
        nearest = min(abs(x - query) for x in remembered)
        if abs(nearest - gap) < 30 / 510:  # within half a step of a block's range: rounded
            continue
        assert memory.near(query, gap) == (nearest <= gap), (query, gap, nearest)
        checked += 1
    assert checked > 1800
    spike = max(forgotten) + 100.0  # beyond its memory, whatever it once saw
    assert not memory.near(spike, 1.0)
    memory.add(spike)
    assert memory.near(spike, 0.0)


def test_a_seasonal_profile_is_sparse_until_it_has_seen_many_slots() -> None:
    sparse = SeasonalProfile(86400.0, 288, 0.3)
    for ts in range(0, 86400, 300):
        slot = sparse.slot(ts)
        sparse.learn(ts, slot, 1.0 + slot, sparse.residual(slot, 1.0 + slot))
        if ts == 300 * 5:
            assert isinstance(sparse.values, dict)
    assert not isinstance(sparse.values, dict)
    assert [sparse.residual(s, 10.0) for s in (0, 7, 287)] == [9.0, 2.0, -278.0]


def test_the_anomaly_novelty_memory_in_blocks_changes_no_verdict() -> None:
    rng = random.Random(5)
    blocks = AnomalyScorer(window=200, min_count=100)
    exact = AnomalyScorer(window=200, min_count=100, block=1)  # one value a block: exact
    verdicts: tuple[list[int], list[int]] = ([], [])
    for i in range(3000):
        value = rng.gauss(50, 1) + (30 if i % 700 == 0 else 0) + (10 if i >= 1500 else 0)
        for scorer, found in zip((blocks, exact), verdicts, strict=True):
            if scorer.observe(i * 300.0, value) is not None:
                found.append(i)
    assert verdicts[0] == verdicts[1]
    assert {700, 1400, 2100} <= set(verdicts[0])  # 2800 repeats 2100: not new
    assert 2800 not in verdicts[0]
