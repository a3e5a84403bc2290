"""What a step is given when it is built: its identity, its clock and the counters.

Time convention: every operator reads processing time through :func:`epoch_seconds`, so the
same code runs on the asyncio scheduler (wall clock) and on ``TestScheduler`` (virtual time,
where one tick is one second since the epoch: ``TestScheduler`` time 210 is ``ts == 210.0``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from reactivex import Observable, abc
from reactivex.disposable import MultipleAssignmentDisposable
from reactivex.scheduler.scheduler import Scheduler

from gateway.counters import Counters
from gateway.model import Aggregate, Reading, Record

Operator = Callable[[Observable[Record]], Observable[Record]]
"""A built step: an Rx operator from records to records."""

_WALL_CLOCK = Scheduler.now
"""reactivex's own ``now`` (wall clock, UTC); virtual-time schedulers override it."""

KeyCount = Callable[[], int]
"""How many device+metric keys a step holds state for, asked at scrape time."""


def _untracked(_size: KeyCount) -> None:
    """Where keys go when nobody tracks them (tests, replay)."""


@dataclass(frozen=True, slots=True)
class StepContext:
    """Identity and services of one step of one pipeline."""

    pipeline: str
    step: str
    scheduler: abc.SchedulerBase
    counters: Counters
    track_keys: Callable[[KeyCount], None] = _untracked
    """A step that keeps state per device+metric hands over how to count its keys (the
    ``edge_gateway_step_keys`` metric): where memory goes as devices come."""
    component: str = field(init=False)
    """``"{pipeline}/{step}"``: the counter component of this step."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "component", f"{self.pipeline}/{self.step}")


@runtime_checkable
class EpochClock(Protocol):
    """A scheduler that can tell its time as epoch seconds without building a datetime."""

    def epoch_now(self) -> float: ...


def epoch_clock(scheduler: abc.SchedulerBase) -> Callable[[], float]:
    """A function returning :func:`epoch_seconds` of ``scheduler``, for per-reading use.

    ``scheduler.now`` builds a datetime (about 1.3 µs); on a scheduler that keeps reactivex's
    wall clock (the live asyncio one) and on one with ``epoch_now`` the time costs far less.
    """
    if isinstance(scheduler, EpochClock):
        return scheduler.epoch_now
    if type(scheduler).now is _WALL_CLOCK:
        return time.time
    return lambda: scheduler.now.timestamp()


@runtime_checkable
class TimerClock(Protocol):
    """A scheduler whose timers run by a clock other than the time it tells (``now``)."""

    def timer_now(self) -> float: ...


def timer_clock(scheduler: abc.SchedulerBase) -> Callable[[], float]:
    """Seconds on the clock ``scheduler``'s timers run by, for deadlines a step keeps itself.

    On a live scheduler that is the monotonic clock (asyncio's ``loop.time()``): setting the
    wall clock (NTP stepping it at boot, an operator) moves no such deadline. On a virtual
    scheduler it is the virtual time, the same as :func:`epoch_clock`.
    """
    if isinstance(scheduler, TimerClock):
        return scheduler.timer_now
    if type(scheduler).now is _WALL_CLOCK:
        return time.monotonic
    return epoch_clock(scheduler)


def epoch_seconds(scheduler: abc.SchedulerBase) -> float:
    """The scheduler's current time as UTC epoch seconds (the ``Reading.ts`` convention).

    A scheduler that keeps reactivex's wall clock (the live ``AsyncIOScheduler``) is read
    with ``time.time()``: a tenth of the cost of building a ``datetime`` per reading.
    """
    if isinstance(scheduler, EpochClock):
        return scheduler.epoch_now()
    if type(scheduler).now is _WALL_CLOCK:
        return time.time()
    return scheduler.now.timestamp()


def every(
    scheduler: abc.SchedulerBase, period: float, action: Callable[[], None]
) -> abc.DisposableBase:
    """Run ``action`` every ``period`` seconds on ``scheduler`` until the result is disposed.

    Works on any scheduler (only ``schedule_relative`` is needed), virtual time included.
    Disposing from inside ``action`` (e.g. on completion) cancels the next tick.
    """
    disposable = MultipleAssignmentDisposable()

    def tick(_scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        if disposable.is_disposed:
            return
        # Schedule the next tick first: if ``action`` raises (a failing downstream observer),
        # the error reaches the scheduler but the ticking goes on.
        disposable.disposable = scheduler.schedule_relative(period, tick)
        action()

    disposable.disposable = scheduler.schedule_relative(period, tick)
    return disposable


def tap(evaluate: Callable[[Reading | Aggregate], Record | None], ctx: StepContext) -> Operator:
    """Pass every item through; after a reading or aggregate, emit what ``evaluate`` returns.

    The shape of every detector step. An item whose evaluation fails is counted as ``error``
    and still passes (the step only observes the stream).
    """
    counters, component = ctx.counters, ctx.component

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            emit = observer.on_next

            def on_next(item: Record) -> None:
                emit(item)
                if type(item) is not Reading and type(item) is not Aggregate:
                    return
                try:
                    found = evaluate(item)
                except Exception:  # the per-item boundary: count, carry on (the item passed)
                    counters.inc(component, "error")
                    return
                if found is not None:
                    emit(found)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator
