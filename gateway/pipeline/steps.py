"""The step registry: one typed model per YAML op, each building its Rx operator.

A step is a mapping with exactly one op key and an optional ``id``::

    - filter: "metric == 'temperature' and value > -40"
    - window: {size: 10s, aggregates: [count, mean]}
      id: ten_seconds

``Step`` is a discriminated union on that op key, so an unknown op fails at load with
``union_tag_invalid`` listing the valid ops, and bad parameters fail with a location such as
``(2, 'window', 'window', 'size')``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    FiniteFloat,
    NonNegativeFloat,
    Tag,
    model_validator,
)
from reactivex import Observable, abc

from gateway.config.types import Duration, StrictModel
from gateway.counters import Counters
from gateway.model import Record
from gateway.pipeline import alerts, operators, windows
from gateway.pipeline.context import KeyCount, Operator, StepContext
from gateway.pipeline.detector_steps import (
    DETECTOR_MODELS,
    ActionStep,
    AnomalyStep,
    CusumStep,
    EwmaStep,
    MadStep,
    PageHinkleyStep,
    RangeStep,
    RateOfChangeStep,
    SilenceStep,
    SpikeStep,
    StuckStep,
    ZScoreStep,
)
from gateway.pipeline.expressions import Expression
from gateway.pipeline.metering import Meters
from gateway.pipeline.step_base import (
    Name,
    PositiveDuration,
    StatName,
    StepModel,
    _none_is_empty,
)
from gateway.sinks.topics import TopicTemplate

__all__ = [
    "STEP_MODELS",
    "STEP_NAMES",
    "Operator",
    "Step",
    "StepContext",
    "StepModel",
    "compile_steps",
    "step_op",
]

MAX_WINDOWS_PER_READING = 100


class FilterStep(StepModel):
    """``filter: <expression>``: keep readings where the expression is truthy."""

    OP: ClassVar[str] = "filter"
    filter: Expression

    def build(self, ctx: StepContext) -> Operator:
        return operators.filter_readings(self.filter.fn, ctx)


class MapStep(StepModel):
    """``map: <expression>``: the reading's new value is ``float(expression)``."""

    OP: ClassVar[str] = "map"
    map: Expression

    def build(self, ctx: StepContext) -> Operator:
        return operators.map_value(self.map.fn, ctx)


class ScaleParams(StrictModel):
    factor: FiniteFloat = 1.0
    offset: FiniteFloat = 0.0
    metric: Name | None = None
    """New metric name for the scaled readings (e.g. ``temperature_f``)."""


class ScaleStep(StepModel):
    """``scale: {factor, offset, metric}``: ``value * factor + offset``."""

    OP: ClassVar[str] = "scale"
    scale: ScaleParams

    def build(self, ctx: StepContext) -> Operator:
        p = self.scale
        return operators.scale(p.factor, p.offset, p.metric, ctx)


class RenameStep(StepModel):
    """``rename: {old_metric: new_metric, ...}``."""

    OP: ClassVar[str] = "rename"
    rename: Annotated[dict[Name, Name], Field(min_length=1)]

    def build(self, ctx: StepContext) -> Operator:
        return operators.rename(self.rename, ctx)


class DedupeParams(StrictModel):
    size: Annotated[int, Field(gt=0, le=10_000_000)] = 10_000
    """How many recent (source, device, metric, seq) keys to remember."""


class DedupeStep(StepModel):
    """``dedupe: {size}``: drop repeated (source, device, metric, seq) readings."""

    OP: ClassVar[str] = "dedupe"
    dedupe: Annotated[DedupeParams, BeforeValidator(_none_is_empty)]

    def build(self, ctx: StepContext) -> Operator:
        return operators.dedupe(self.dedupe.size, ctx)


class DistinctParams(StrictModel):
    epsilon: Annotated[NonNegativeFloat, Field(allow_inf_nan=False)] = 0.0


class DistinctUntilChangedStep(StepModel):
    """``distinct_until_changed: {epsilon}``: drop values within epsilon of the last emitted."""

    OP: ClassVar[str] = "distinct_until_changed"
    distinct_until_changed: Annotated[DistinctParams, BeforeValidator(_none_is_empty)]

    def build(self, ctx: StepContext) -> Operator:
        return operators.distinct_until_changed(self.distinct_until_changed.epsilon, ctx)


class ThrottleStep(StepModel):
    """``throttle: 1s``: per key, the first reading then none for the duration."""

    OP: ClassVar[str] = "throttle"
    throttle: PositiveDuration

    def build(self, ctx: StepContext) -> Operator:
        return operators.throttle(self.throttle, ctx)


class SampleStep(StepModel):
    """``sample: 5s``: per key, the latest reading of each interval."""

    OP: ClassVar[str] = "sample"
    sample: PositiveDuration

    def build(self, ctx: StepContext) -> Operator:
        return operators.sample(self.sample, ctx)


class WindowParams(StrictModel):
    size: PositiveDuration
    slide: PositiveDuration | None = None
    """Omitted (or equal to size) for tumbling windows."""
    aggregates: tuple[StatName, ...] = windows.DEFAULT_STATS
    lateness: Duration = 2.0
    """Allowed lateness: how far behind its key's newest reading a reading may still be
    counted (event time), or how long after its end a window stays open (processing time)."""
    time: Literal["event", "processing"] = "event"
    """``event``: windows close on each device+metric's watermark (readings' own ``ts``),
    so replays and live runs agree; ``processing``: on the gateway's clock."""
    late_topic: TopicTemplate | None = None
    """Event time only: publish late readings there as ``late`` messages (side output)."""

    @model_validator(mode="after")
    def _check(self) -> WindowParams:
        if self.slide is not None:
            if self.slide > self.size:
                raise ValueError("slide must not exceed size (windows would leave gaps)")
            if self.size / self.slide > MAX_WINDOWS_PER_READING:
                raise ValueError(
                    f"size / slide must be at most {MAX_WINDOWS_PER_READING} "
                    "(each reading joins that many windows)"
                )
        if len(set(self.aggregates)) != len(self.aggregates):
            raise ValueError("aggregates has duplicates")
        return self


class WindowStep(StepModel):
    """``window: {size, slide, aggregates, lateness}``: readings in, Aggregates out."""

    OP: ClassVar[str] = "window"
    window: WindowParams

    def build(self, ctx: StepContext) -> Operator:
        p = self.window
        if p.time == "event":
            return windows.event_window(
                p.size, p.slide, p.aggregates, p.lateness, p.late_topic, ctx
            )
        return windows.window(p.size, p.slide, p.aggregates, p.lateness, ctx)


class ThresholdParams(StrictModel):
    above: FiniteFloat | None = None
    below: FiniteFloat | None = None
    hysteresis: Annotated[NonNegativeFloat, Field(allow_inf_nan=False)] = 0.0
    for_: Duration = Field(default=0.0, alias="for")
    """How long (event time) the value must stay beyond the limit before raising."""
    severity: Literal["info", "warning", "critical"] = "warning"
    stat: StatName = "mean"
    """Which statistic of an incoming Aggregate is compared."""

    @model_validator(mode="after")
    def _check(self) -> ThresholdParams:
        if self.above is None and self.below is None:
            raise ValueError("set at least one of above, below")
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise ValueError("below must be less than above")
        return self


class ThresholdStep(StepModel):
    """``threshold: {above, below, hysteresis, for, severity, stat}``: raise/clear alerts."""

    OP: ClassVar[str] = "threshold"
    threshold: ThresholdParams

    def build(self, ctx: StepContext) -> Operator:
        p = self.threshold
        return alerts.threshold(p.above, p.below, p.hysteresis, p.for_, p.severity, p.stat, ctx)


STEP_MODELS: tuple[type[StepModel], ...] = (
    FilterStep,
    MapStep,
    ScaleStep,
    RenameStep,
    DedupeStep,
    DistinctUntilChangedStep,
    ThrottleStep,
    SampleStep,
    WindowStep,
    ThresholdStep,
    *DETECTOR_MODELS,
)
STEP_NAMES: tuple[str, ...] = tuple(model.OP for model in STEP_MODELS)


def step_op(value: Any) -> str | None:
    """The op key of a step: the one key that is not ``id`` (the union's discriminator)."""
    if isinstance(value, StepModel):
        return value.OP
    if isinstance(value, dict):
        ops = [key for key in value if key != "id"]
        return str(ops[0]) if len(ops) == 1 else None
    return None


def _one_op(value: Any) -> Any:
    """Explain a step that does not have exactly one op key (before discrimination)."""
    if isinstance(value, StepModel):
        return value
    expected = ", ".join(STEP_NAMES)
    if not isinstance(value, dict):
        raise ValueError(f"a step must be a mapping with one op key ({expected})")
    ops = [str(key) for key in value if key != "id"]
    if not ops:
        raise ValueError(f"a step needs an op key (one of {expected})")
    if len(ops) > 1:
        raise ValueError(f"a step has exactly one op key, got {', '.join(ops)} (one step each)")
    return value


Step = Annotated[
    Annotated[FilterStep, Tag("filter")]
    | Annotated[MapStep, Tag("map")]
    | Annotated[ScaleStep, Tag("scale")]
    | Annotated[RenameStep, Tag("rename")]
    | Annotated[DedupeStep, Tag("dedupe")]
    | Annotated[DistinctUntilChangedStep, Tag("distinct_until_changed")]
    | Annotated[ThrottleStep, Tag("throttle")]
    | Annotated[SampleStep, Tag("sample")]
    | Annotated[WindowStep, Tag("window")]
    | Annotated[ThresholdStep, Tag("threshold")]
    | Annotated[RangeStep, Tag("range")]
    | Annotated[RateOfChangeStep, Tag("rate_of_change")]
    | Annotated[ZScoreStep, Tag("zscore")]
    | Annotated[EwmaStep, Tag("ewma")]
    | Annotated[MadStep, Tag("mad")]
    | Annotated[CusumStep, Tag("cusum")]
    | Annotated[PageHinkleyStep, Tag("page_hinkley")]
    | Annotated[StuckStep, Tag("stuck")]
    | Annotated[SpikeStep, Tag("spike")]
    | Annotated[SilenceStep, Tag("silence")]
    | Annotated[AnomalyStep, Tag("anomaly")]
    | Annotated[ActionStep, Tag("action")],
    Discriminator(step_op),
    BeforeValidator(_one_op),
]
"""One pipeline step, validated by its op key."""


def compile_steps(
    pipeline_id: str,
    steps: Sequence[StepModel],
    scheduler: abc.SchedulerBase,
    counters: Counters,
    meters: Meters | None = None,
    keys: dict[str, KeyCount] | None = None,
) -> Operator:
    """Build every step and chain them; no steps forward records unchanged.

    With ``meters``, each step's records in and out are counted. With ``keys``, each step
    that keeps state per device+metric puts there, by step id, how to count its keys.

    Step ids are the explicit ``id`` or ``"{index}:{op}"``; they must be unique in a pipeline.
    """
    built: list[Operator] = []
    seen: set[str] = set()
    if meters is not None:
        meters.begin(pipeline_id)
    for index, step in enumerate(steps):
        step_id = step.id or f"{index}:{step.OP}"
        if step_id in seen:
            raise ValueError(f"pipeline {pipeline_id!r}: duplicate step id {step_id!r}")
        seen.add(step_id)
        if keys is None:
            ctx = StepContext(pipeline_id, step_id, scheduler, counters)
        else:
            track = functools.partial(keys.__setitem__, step_id)
            ctx = StepContext(pipeline_id, step_id, scheduler, counters, track)
        operator = step.build(ctx)
        built.append(
            operator if meters is None else meters.wrap_step(pipeline_id, step_id, operator)
        )

    def pipeline(source: Observable[Record]) -> Observable[Record]:
        for operator in built:
            source = operator(source)
        return source

    return pipeline
