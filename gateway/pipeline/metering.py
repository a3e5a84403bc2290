"""Per-step record counts and processing time, per-pipeline processing time, for metrics.

Cheap enough for the per-reading path: a step meter is an attribute increment on a slotted
object (no allocation) and two ``perf_counter`` calls around what the step hands on; the
pipeline timer two more per reading (see ``tests/benchmarks/bench_metering.py`` for the
measured cost). A step's own time is the time spent from a record entering it until the call
returned, minus the time the steps after it spent on what it handed on. Only work done while
a reading is pushed in counts: an emission driven by a timer (a processing-time window
closing on its tick) is not timed. Meters are kept by id, so counts stay monotonic when a
reload rebuilds a pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc

from gateway.pipeline.context import Operator


class StepCounts:
    """Records out of one step; into it came what the step before emitted (``previous``),
    or what the pipeline received for the first step. ``received - emitted`` were dropped
    or absorbed (a window turns many readings into one aggregate)."""

    __slots__ = ("downstream", "emitted", "previous")

    def __init__(self) -> None:
        self.emitted = 0
        self.downstream = 0.0
        """Seconds the later steps (and the router) spent on what this step emitted."""
        self.previous: StepCounts | None = None


class PipelineTime:
    """Time spent pushing readings through a pipeline (all its steps, router included)."""

    __slots__ = ("active", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.active = False
        """True while a reading is being pushed through (so step timings count)."""


class Meters:
    """Every step's counts and every pipeline's time, by id."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.steps: dict[tuple[str, str], StepCounts] = {}
        self.pipelines: dict[str, PipelineTime] = {}
        self._last: dict[str, StepCounts] = {}

    def begin(self, pipeline: str) -> None:
        """Call before wrapping a pipeline's steps (again, on reload) in order."""
        self._last.pop(pipeline, None)

    def received(self, pipeline: str, step: str) -> int:
        """Records into ``step``: the previous step's output, or the pipeline's input."""
        counts = self.steps[(pipeline, step)]
        if counts.previous is not None:
            return counts.previous.emitted
        spent = self.pipelines.get(pipeline)
        return spent.count if spent is not None else 0

    def step_seconds(self, pipeline: str, step: str) -> float:
        """Seconds ``step`` itself spent on pushed records (later steps not included)."""
        counts = self.steps[(pipeline, step)]
        if counts.previous is not None:
            spent_in_and_after = counts.previous.downstream
        else:
            timer = self.pipelines.get(pipeline)
            spent_in_and_after = timer.seconds if timer is not None else 0.0
        return max(0.0, spent_in_and_after - counts.downstream)

    def wrap_step(self, pipeline: str, step: str, operator: Operator) -> Operator:
        """Count what ``operator`` emits; what it received is what the step before emitted
        (or, for the first step, what the pipeline received), so one layer per step does."""
        counts = self.steps.setdefault((pipeline, step), StepCounts())
        spent = self.pipelines.setdefault(pipeline, PipelineTime())
        clock = self._clock
        previous = self._last.get(pipeline)
        self._last[pipeline] = counts

        def metered(source: Observable[Any]) -> Observable[Any]:
            upstream = operator(source)

            def subscribe(observer: abc.ObserverBase[Any], scheduler: Any = None) -> Any:
                forward = observer.on_next

                def counted(item: Any) -> None:
                    counts.emitted += 1
                    if spent.active:
                        start = clock()
                        forward(item)
                        counts.downstream += clock() - start
                    else:
                        forward(item)

                return upstream.subscribe(
                    counted, observer.on_error, observer.on_completed, scheduler=scheduler
                )

            return Observable(subscribe)

        counts.previous = previous
        return metered

    def timed(self, pipeline: str, push: Callable[[Any], None]) -> Callable[[Any], None]:
        spent = self.pipelines.setdefault(pipeline, PipelineTime())
        clock = self._clock

        def timed_push(item: Any) -> None:
            outer = spent.active
            spent.active = True
            start = clock()
            try:
                push(item)
            finally:
                spent.seconds += clock() - start
                spent.count += 1
                spent.active = outer

        return timed_push
