"""Helpers for testing steps in virtual time (shipped with the package, as bytewax does).

On ``TestScheduler`` one tick is one second since the epoch, so a record pushed at virtual
time 210 is processed when ``epoch_seconds(scheduler) == 210.0``.
"""

from __future__ import annotations

from reactivex import abc
from reactivex.notification import OnNext
from reactivex.testing.mockobserver import MockObserver

from gateway.counters import Counters
from gateway.model import Reading, Record
from gateway.pipeline.context import StepContext


def step_context(
    scheduler: abc.SchedulerBase,
    counters: Counters | None = None,
    pipeline: str = "p",
    step: str = "s",
) -> StepContext:
    """A context for one step under test; counters land on component ``"p/s"``."""
    return StepContext(pipeline, step, scheduler, counters if counters is not None else Counters())


def reading(
    value: float,
    ts: float = 0.0,
    device: str = "d1",
    metric: str = "m",
    source: str = "src",
    seq: int | None = None,
) -> Reading:
    """A reading with test defaults."""
    return Reading(source, device, metric, value, ts, seq)


def emitted(observer: MockObserver[Record]) -> list[tuple[float, Record]]:
    """The ``(virtual time, record)`` pairs an observer received, in order."""
    return [
        (float(m.time), m.value.value) for m in observer.messages if isinstance(m.value, OnNext)
    ]


def values(observer: MockObserver[Record]) -> list[float]:
    """The values of the readings an observer received (other records skipped)."""
    return [r.value for _, r in emitted(observer) if isinstance(r, Reading)]
