"""Per-step record counts and per-pipeline processing time, for the metrics endpoint.

Cheap enough for the per-reading path: a step meter is an attribute increment on a slotted
object (no allocation), the pipeline timer two ``perf_counter`` calls per reading (see
``tests/benchmarks/bench_metering.py`` for the measured cost). Meters are kept by id, so counts stay
monotonic when a reload rebuilds a pipeline.
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

    __slots__ = ("emitted", "previous")

    def __init__(self) -> None:
        self.emitted = 0
        self.previous: StepCounts | None = None


class PipelineTime:
    """Time spent pushing readings through a pipeline (all its steps, router included)."""

    __slots__ = ("count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0


class Meters:
    """Every step's counts and every pipeline's time, by id."""

    def __init__(self) -> None:
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

    def wrap_step(self, pipeline: str, step: str, operator: Operator) -> Operator:
        """Count what ``operator`` emits; what it received is what the step before emitted
        (or, for the first step, what the pipeline received), so one layer per step does."""
        counts = self.steps.setdefault((pipeline, step), StepCounts())
        previous = self._last.get(pipeline)
        self._last[pipeline] = counts

        def metered(source: Observable[Any]) -> Observable[Any]:
            upstream = operator(source)

            def subscribe(observer: abc.ObserverBase[Any], scheduler: Any = None) -> Any:
                forward = observer.on_next

                def counted(item: Any) -> None:
                    counts.emitted += 1
                    forward(item)

                return upstream.subscribe(
                    counted, observer.on_error, observer.on_completed, scheduler=scheduler
                )

            return Observable(subscribe)

        counts.previous = previous
        return metered

    def timed(self, pipeline: str, push: Callable[[Any], None]) -> Callable[[Any], None]:
        spent = self.pipelines.setdefault(pipeline, PipelineTime())
        clock = time.perf_counter

        def timed_push(item: Any) -> None:
            start = clock()
            try:
                push(item)
            finally:
                spent.seconds += clock() - start
                spent.count += 1

        return timed_push
