"""Event-time windows: per-key watermark, allowed lateness, late side output, replay == live."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler
from reactivex.testing.recorded import Recorded

from gateway.counters import Counters
from gateway.model import Aggregate, Message, Reading, Record
from gateway.pipeline import windows
from gateway.pipeline.steps import Step
from gateway.pipeline.testing import emitted, reading, step_context

STEPS: TypeAdapter[list[Step]] = TypeAdapter(list[Step])
on_next = ReactiveTest.on_next
at = cast(Callable[[float, Record], Recorded[Record]], on_next)
"""``on_next`` at a fractional virtual time (``TestScheduler`` takes floats; the stub says int)."""
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
    assert when == 215.0  # 12 s of processing time after ts 5000 arrived: 5012 by its clock


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


# ---------------------------------------------------------------- closing on the clock


def aggregates_at(out: list[tuple[float, Record]]) -> list[tuple[float, str, float, int]]:
    return [(t, r.device, r.start, r.count) for t, r in out if isinstance(r, Aggregate)]


def test_a_live_window_closes_at_end_plus_lateness_without_waiting_for_the_next_reading() -> None:
    """A device stamping readings with the gateway's clock, every 3 s: [200, 210) leaves at
    212 by the scheduler's clock, not at 213 when the next reading would have closed it."""
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        *[on_next(t, reading(1, ts=float(t))) for t in range(201, 226, 3)], on_completed(240)
    )
    out = aggregates_at(emitted(scheduler.start(lambda: op(xs))))
    assert out == [(212.0, "d1", 200.0, 3), (222.0, "d1", 210.0, 4), (232.0, "d1", 220.0, 2)]


def test_the_deadline_follows_the_device_clock_offset_and_transit_delay() -> None:
    """Readings stamped 100 s behind the gateway's clock and 0.25 s in transit: the window
    closes 12 s (size + lateness) after its start by the device's clock, plus the transit."""
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        *[at(t + 100.25, reading(1, ts=float(t))) for t in (101, 105, 109)]
    )
    out = aggregates_at(emitted(scheduler.start(lambda: op(xs))))
    assert out == [(212.25, "d1", 100.0, 3)]


class CountingScheduler(TestScheduler):
    """A TestScheduler that records every relative due time it is asked for (timers armed)."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: list[float] = []

    def schedule_relative(self, duetime, action, state=None):  # type: ignore[no-untyped-def]
        self.scheduled.append(float(duetime))
        return super().schedule_relative(duetime, action, state)


def test_many_keys_closing_at_once_share_one_timer() -> None:
    scheduler = CountingScheduler()
    scheduled = scheduler.scheduled
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    keys = [f"dev-{i:04d}" for i in range(1000)]
    xs = scheduler.create_hot_observable(
        *[on_next(201, reading(1, ts=201.0, device=d)) for d in keys],
        *[on_next(205, reading(2, ts=205.0, device=d)) for d in keys],
    )
    observer = scheduler.create_observer()
    xs.pipe(op).subscribe(observer)
    scheduler.advance_to(211)
    assert scheduled == [11.0]  # 2,000 readings of 1,000 keys: one timer, set once
    scheduler.advance_to(300)
    out = aggregates_at(emitted(observer))
    assert sorted(out) == [(212.0, d, 200.0, 2) for d in keys]
    assert scheduled == [11.0]  # nothing left open: no further timer


def test_deadlines_within_one_millisecond_share_a_timer_and_none_closes_early() -> None:
    """Deadlines are rounded up to the millisecond: devices whose readings arrive fractions of
    a millisecond apart (thousands of them at 5,000 readings/s) share one timer run, and no
    window closes before its own deadline or more than a millisecond after it."""
    scheduler = CountingScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        at(201.2504, reading(1, ts=201.0, device="a")),  # closes at 212.2504
        at(201.2507, reading(1, ts=201.0, device="b")),  # 212.2507
        at(201.2512, reading(1, ts=201.0, device="c")),  # 212.2512: the next millisecond
    )
    observer = scheduler.create_observer()
    xs.pipe(op).subscribe(observer)
    scheduler.advance_to(300)
    out = aggregates_at(emitted(observer))
    assert [(d, start, n) for _, d, start, n in out] == [
        ("a", 200.0, 1),
        ("b", 200.0, 1),
        ("c", 200.0, 1),
    ]
    times = [t for t, *_ in out]
    assert times == pytest.approx([212.251, 212.251, 212.252], abs=1e-9)
    assert len(scheduler.scheduled) == 2  # one timer for a and b, one for c


def test_a_key_s_windows_come_out_in_order_while_the_timer_releases_a_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three chunks of windows close at 212 and go out one chunk per scheduler turn (no time
    budget: one chunk per turn); a reading that arrives between two turns and carries its key
    past a second window does not overtake the first one, still waiting in the burst."""
    monkeypatch.setattr(windows, "EMIT_BUDGET_S", 0.0)
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    source: Subject[Record] = Subject()
    observer = scheduler.create_observer()
    op(source).subscribe(observer)
    keys = [f"k{i:05d}" for i in range(3 * windows.EMIT_CHUNK)]
    last = keys[-1]

    def push(*readings: Reading) -> Callable[..., None]:
        def action(*_: object) -> None:
            for r in readings:
                source.on_next(r)

        return action

    scheduler.schedule_absolute(201, push(*[reading(1, 201.0, d) for d in keys]))
    scheduler.schedule_absolute(210, push(reading(1, 210.0, last)))  # opens [210, 220)
    # queued after the timer for 212 was set, so it runs between the timer's turns
    late_push = push(reading(1, 223.0, last))  # its watermark passes 220
    scheduler.schedule_absolute(211, lambda *_: scheduler.schedule_absolute(212, late_push))
    scheduler.start()
    out = aggregates_at(emitted(observer))
    burst = out[:-1]
    assert sorted(burst) == sorted([(212.0, d, 200.0, 1) for d in keys] + [(212.0, last, 210.0, 1)])
    assert burst[-2:] == [(212.0, last, 200.0, 1), (212.0, last, 210.0, 1)]
    assert out[-1] == (221.0, last, 220.0, 1)  # 212 + (230 + 2 - 223): the jump counts


def test_a_burst_goes_out_in_turns_of_emit_budget_s_of_processing_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer emits closed windows until ``EMIT_BUDGET_S`` of processing time is spent,
    then yields the loop for a turn: readings are taken while a large burst comes out."""
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(windows, "perf_counter", lambda: next(ticks) / 1000)  # 1 ms a look
    monkeypatch.setattr(windows, "EMIT_BUDGET_S", 0.0025)  # 3 chunks a turn
    scheduler = TestScheduler()
    turns: list[int] = []
    schedule = scheduler.schedule
    observer = scheduler.create_observer()

    def counting(action: object, state: object = None) -> object:
        turns.append(len(observer.messages))
        return schedule(action, state)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler, "schedule", counting)
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    source: Subject[Record] = Subject()
    op(source).subscribe(observer)
    keys = [f"k{i:05d}" for i in range(7 * windows.EMIT_CHUNK)]  # 7 chunks: turns of 3, 3, 1

    def push(*_: object) -> None:
        for d in keys:
            source.on_next(reading(1, 201.0, d))

    scheduler.schedule_absolute(201, push)
    scheduler.start()
    out = aggregates_at(emitted(observer))
    assert sorted(out) == [(212.0, d, 200.0, 1) for d in keys]
    assert turns == [150, 300]  # emitted when each next turn was scheduled


def test_keys_with_different_deadlines_each_close_on_their_own() -> None:
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=201.0, device="a")),  # [200, 210) closes at 212
        on_next(202, reading(1, ts=195.0, device="b")),  # [190, 200) closes at 202 + 7 = 209
        on_next(203, reading(1, ts=208.5, device="c")),  # [200, 210) closes at 203 + 3.5
        on_next(204, reading(1, ts=212.0, device="c")),  # c's watermark: [200, 210) at once,
    )  # and [210, 220) closes at 204 + 10
    out = aggregates_at(emitted(scheduler.start(lambda: op(xs))))
    assert out == [
        (204.0, "c", 200.0, 1),
        (209.0, "b", 190.0, 1),
        (212.0, "a", 200.0, 1),
        (214.0, "c", 210.0, 1),
    ]


def test_a_reading_that_jumps_ahead_brings_its_deadline_forward() -> None:
    """A device catching up (event time faster than the gateway's clock): the deadline set
    when its window opened would be 9 s late; its newest reading moves it earlier."""
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=100.0)),  # [100, 110) due at 201 + 12 = 213
        on_next(202, reading(1, ts=109.0)),  # now due at 202 + 3 = 205
    )
    out = aggregates_at(emitted(scheduler.start(lambda: op(xs))))
    assert out == [(205.0, "d1", 100.0, 2)]


def test_sliding_windows_close_one_by_one_on_the_clock() -> None:
    scheduler = TestScheduler()
    op = windows.event_window(10.0, 5.0, ("count",), 0.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(on_next(207, reading(1, ts=207.0)))
    out = aggregates_at(emitted(scheduler.start(lambda: op(xs))))
    assert out == [(210.0, "d1", 200.0, 1), (215.0, "d1", 205.0, 1)]


class JumpingClock(TestScheduler):
    """Like the live asyncio scheduler: timers run by one clock (monotonic there, the virtual
    ticks here) while the epoch time steps read (``time.time()`` there) can be set forward
    or back."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def epoch_now(self) -> float:
        return self.now.timestamp() + self.offset

    def timer_now(self) -> float:
        return self.now.timestamp()


@pytest.mark.parametrize("jump", [-3600.0, 0.0, 3600.0])
def test_setting_the_wall_clock_moves_no_deadline(jump: float) -> None:
    scheduler = JumpingClock()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        on_next(201, reading(1, ts=201.0, device="idle")),
        *[on_next(t, reading(1, ts=float(t), device="live")) for t in range(201, 226, 3)],
    )
    scheduler.schedule_absolute(205.5, lambda *_: setattr(scheduler, "offset", jump))
    out = aggregates_at(emitted(scheduler.start(lambda: op(xs), disposed=300)))
    assert out == [
        (212.0, "idle", 200.0, 1),
        (212.0, "live", 200.0, 3),
        (222.0, "live", 210.0, 4),
        (232.0, "live", 220.0, 2),
    ]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 120)), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_transit_jitter_below_the_lateness_does_not_change_the_aggregates(
    points: list[tuple[int, int]], rng: random.Random
) -> None:
    """Live readings delayed by 0..1.9 s each (lateness 2 s), so a device's readings may
    arrive out of order: each window's deadline still comes after its last reading, and the
    result is that of a full-speed replay."""
    stamps = sorted({(d, ts) for d, ts in points}, key=lambda p: p[1])
    readings = [reading(float(ts % 7), ts=float(ts), device=f"d{d}") for d, ts in stamps]
    delays = [rng.uniform(0.0, 0.95) for _ in readings]
    live_scheduler = TestScheduler()
    op = windows.event_window(
        10.0, None, ("count", "mean"), 2.0, None, step_context(live_scheduler)
    )
    live = live_scheduler.create_hot_observable(
        *sorted(
            (at(r.ts + 201 + 2 * delay, r) for r, delay in zip(readings, delays, strict=True)),
            key=lambda m: m.time,
        )
    )
    live_out = emitted(live_scheduler.start(lambda: op(live), disposed=100_000))
    _, fast = run_both_ways(readings)
    assert summary(live_out) == fast


def test_a_key_catching_up_moves_its_deadline_without_a_timer_per_reading() -> None:
    """A backlog of 50 readings in one instant, each 0.1 s further in event time: the key's
    deadline moves earlier with every one, and the timer is set 4 times (when the window
    opens, at once to enter the key anew, for its new deadline and for its old one, then
    stale), not once per reading."""
    scheduler = CountingScheduler()
    scheduled = scheduler.scheduled
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    source: Subject[Record] = Subject()
    observer = scheduler.create_observer()
    op(source).subscribe(observer)

    def backlog(*_: object) -> None:
        for i in range(50):
            source.on_next(reading(1, ts=100.0 + i / 10))

    scheduler.schedule_absolute(201, backlog)
    scheduler.start()
    assert len(scheduled) == 4
    [(when, device, start, count)] = aggregates_at(emitted(observer))
    assert (device, start, count) == ("d1", 100.0, 50)
    assert when == pytest.approx(201 + 112 - 104.9)  # by the newest reading's deadline


def expected_windows(
    arrivals: list[tuple[float, str, float]], size: float, lateness: float
) -> list[tuple[float, str, float, int]]:
    """What a tumbling event window emits, worked out per key the plain way: a window closes
    when a reading's watermark passes its end (at that reading), or when the deadline set by
    the key's newest reading (``arrival + end + lateness - newest``) comes before its next
    reading (at once if it is already past); a reading for a window already closed is late."""
    out: list[tuple[float, str, float, int]] = []
    for key in sorted({k for _, k, _ in arrivals}):
        newest, arrival, last = -math.inf, 0.0, 0.0
        counts: dict[float, int] = {}
        closed: set[float] = set()
        for p, ts in [(a[0], a[2]) for a in arrivals if a[1] == key] + [(math.inf, None)]:
            for start in sorted(counts):  # the deadlines that come before this reading
                due = arrival + (start + size + lateness - newest)
                if due > p or p == last:  # a timer set in this instant runs after it
                    break
                out.append((max(due, last), key, start, counts.pop(start)))  # past: at once
                closed.add(start)
            if ts is None:
                break
            last = p
            if ts > newest:
                newest, arrival = ts, p
            start = math.floor(ts / size) * size
            if start + size + lateness <= newest or start in closed:
                continue  # late
            counts[start] = counts.get(start, 0) + 1
            for start in sorted(counts):  # the watermark passes their end
                if start + size + lateness <= newest:
                    out.append((p, key, start, counts.pop(start)))
                    closed.add(start)
    return sorted(out)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from([0, 0, 0, 1, 2, 7, 20]),  # processing time to the next reading
            st.sampled_from([-2, -1, 0, 1, 1, 2, 3, 6]),  # its event time, to the key's last
        ),
        min_size=1,
        max_size=80,
    )
)
def test_windows_close_by_the_deadline_of_each_key_s_newest_reading(
    steps: list[tuple[str, int, int]],
) -> None:
    """Devices that pause, catch up (event time running ahead of the clock, many readings
    in one instant) and send out of order: every window closes when the plain per-key rule
    says, however often its deadline moved."""
    p = 201.0
    last = {"a": 100.5, "b": 103.5}  # x.5: a deadline never falls on a reading's instant
    arrivals: list[tuple[float, str, float]] = []
    for key, gap, step in steps:
        p += gap
        last[key] += step
        arrivals.append((p, key, last[key]))
    scheduler = TestScheduler()
    op = windows.event_window(10.0, None, ("count",), 2.0, None, step_context(scheduler))
    xs = scheduler.create_hot_observable(
        *[at(t, reading(1, ts=ts, device=key)) for t, key, ts in arrivals]
    )
    out = aggregates_at(emitted(scheduler.start(lambda: op(xs), disposed=100_000)))
    assert sorted(out) == expected_windows(arrivals, 10.0, 2.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=60),
            st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5)),
        ),
        max_size=40,
    )
)
def test_the_inlined_statistics_are_those_of_the_accumulator(
    points: list[tuple[int, float]],
) -> None:
    """Without percentiles or stddev a tumbling window adds inline; the result is the same."""
    basic = ("count", "sum", "mean", "min", "max", "first", "last")
    outs = []
    for names in (basic, (*basic, "stddev")):  # stddev: Accumulator.add
        scheduler = TestScheduler()
        op = windows.event_window(10.0, None, names, 2.0, None, step_context(scheduler))
        xs = scheduler.create_hot_observable(
            *[on_next(201 + i, reading(v, ts=float(ts))) for i, (ts, v) in enumerate(points)],
            on_completed(300),
        )
        outs.append(
            [
                (r.start, r.count, {k: r.stats[k] for k in basic})
                for _, r in emitted(scheduler.start(lambda op=op, xs=xs: op(xs)))
                if isinstance(r, Aggregate)
            ]
        )
    inline, added = outs
    assert repr(inline) == repr(added)  # repr: NaN-free floats compared bit for bit
