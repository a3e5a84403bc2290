"""Detector steps: one typed model per detector kind, all sharing the alert lifecycle keys.

Every detector accepts ``severity``, ``for`` (how long, in event time, readings must stay
anomalous before raising), ``clear_after`` (normal readings needed to clear), ``cooldown``
(least event time between two raises of one device+metric), ``stat`` (which statistic of
an incoming aggregate is scored) and ``max_keys`` (a cap on the device+metric keys it keeps
state for, least recently seen evicted first), besides its own parameters::

    - zscore: {window: 120, limit: 4, cooldown: 1h, severity: warning}
      id: vibration-z
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    FiniteFloat,
    NonNegativeFloat,
    model_validator,
)

from gateway.config.types import Duration, StrictModel
from gateway.pipeline import actions, silence
from gateway.pipeline.context import Operator, StepContext
from gateway.pipeline.detect import Detector, Lifecycle, detect
from gateway.pipeline.scorers import (
    AnomalyScorer,
    CusumScorer,
    EwmaScorer,
    MadScorer,
    PageHinkleyScorer,
    RangeScorer,
    RateScorer,
    ScorerFactory,
    SeasonalProfile,
    SpikeScorer,
    StuckScorer,
    ZScoreScorer,
)
from gateway.pipeline.step_base import PositiveDuration, StatName, StepModel, _none_is_empty
from gateway.sinks.topics import TopicTemplate

Severity = Literal["info", "warning", "critical"]
Count = Annotated[int, Field(ge=1, le=1_000_000)]
Limit = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class DetectorParams(StrictModel):
    """The lifecycle keys every detector shares."""

    severity: Severity = "warning"
    for_: Duration = Field(default=0.0, alias="for")
    clear_after: Count = 1
    cooldown: Duration = 0.0
    stat: StatName = "mean"
    max_keys: Annotated[int, Field(ge=1)] | None = None
    """At most this many device+metric keys keep a scorer; a new key beyond it evicts the
    least recently seen one (counted as ``evicted``), whose state starts over if it comes
    back. Default: no limit."""

    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.for_, self.clear_after, self.cooldown)


class DetectorStepModel(StepModel):
    """A step that runs a scorer per device+metric under the alert lifecycle."""

    def params(self) -> DetectorParams:
        raise NotImplementedError

    def factory(self) -> ScorerFactory:
        raise NotImplementedError

    def build(self, ctx: StepContext) -> Operator:
        p = self.params()
        detector = Detector(
            self.OP,
            self.factory(),
            p.severity,
            p.lifecycle(),
            ctx.pipeline,
            ctx.step,
            p.stat,
            ctx.counters,
            p.max_keys,
        )
        ctx.track_keys(detector.keys.__len__)
        return detect(detector, ctx)


class RangeParams(DetectorParams):
    min: FiniteFloat
    max: FiniteFloat
    severity: Severity = "critical"

    @model_validator(mode="after")
    def _check(self) -> RangeParams:
        if self.min >= self.max:
            raise ValueError("min must be less than max")
        return self


class RangeStep(DetectorStepModel):
    """``range: {min, max}``: values outside what the sensor can measure (a sensor fault)."""

    OP: ClassVar[str] = "range"
    range: RangeParams

    def params(self) -> DetectorParams:
        return self.range

    def factory(self) -> ScorerFactory:
        low, high = self.range.min, self.range.max
        return lambda: RangeScorer(low, high)


class RateParams(DetectorParams):
    max: Limit
    per: PositiveDuration = 1.0
    """The rate's time unit: ``1s`` (per second), ``1m`` (per minute)..."""


class RateOfChangeStep(DetectorStepModel):
    """``rate_of_change: {max, per}``: |change between readings| / elapsed time above max."""

    OP: ClassVar[str] = "rate_of_change"
    rate_of_change: RateParams

    def params(self) -> DetectorParams:
        return self.rate_of_change

    def factory(self) -> ScorerFactory:
        limit, per = self.rate_of_change.max, self.rate_of_change.per
        return lambda: RateScorer(limit, per)


class WindowedParams(DetectorParams):
    window: Annotated[int, Field(ge=2, le=100_000)] = 100
    """How many recent readings of the device+metric form the reference."""
    limit: Limit = 4.0
    min_count: Count = 30
    """Readings needed before any verdict."""


class ZScoreStep(DetectorStepModel):
    """``zscore: {window, limit, min_count}``: |value - mean| / std over a rolling window."""

    OP: ClassVar[str] = "zscore"
    zscore: Annotated[WindowedParams, BeforeValidator(_none_is_empty)]

    def params(self) -> DetectorParams:
        return self.zscore

    def factory(self) -> ScorerFactory:
        p = self.zscore
        return lambda: ZScoreScorer(p.window, p.limit, p.min_count)


class MadStep(DetectorStepModel):
    """``mad: {window, limit, min_count}``: robust z-score from the rolling median and MAD."""

    OP: ClassVar[str] = "mad"
    mad: Annotated[WindowedParams, BeforeValidator(_none_is_empty)]

    def params(self) -> DetectorParams:
        return self.mad

    def factory(self) -> ScorerFactory:
        p = self.mad
        return lambda: MadScorer(p.window, p.limit, p.min_count)


class SpikeParams(WindowedParams):
    limit: Limit = 6.0


class SpikeStep(DetectorStepModel):
    """``spike: {window, limit, min_count}``: one outlying reading, the next one back to normal.

    The alert comes with the reading after the spike and carries the spike's event time.
    """

    OP: ClassVar[str] = "spike"
    spike: Annotated[SpikeParams, BeforeValidator(_none_is_empty)]

    def params(self) -> DetectorParams:
        return self.spike

    def factory(self) -> ScorerFactory:
        p = self.spike
        return lambda: SpikeScorer(p.window, p.limit, p.min_count)


class EwmaParams(DetectorParams):
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    limit: Limit = 4.0
    min_count: Count = 30


class EwmaStep(DetectorStepModel):
    """``ewma: {alpha, limit, min_count}``: distance from an exponentially weighted mean."""

    OP: ClassVar[str] = "ewma"
    ewma: Annotated[EwmaParams, BeforeValidator(_none_is_empty)]

    def params(self) -> DetectorParams:
        return self.ewma

    def factory(self) -> ScorerFactory:
        p = self.ewma
        return lambda: EwmaScorer(p.alpha, p.limit, p.min_count)


class CusumParams(DetectorParams):
    k: Annotated[NonNegativeFloat, Field(allow_inf_nan=False)] = 0.5
    """Slack, in baseline standard deviations: drifts smaller than this are ignored."""
    h: Limit = 8.0
    """Decision limit of the cumulative sum."""
    warmup: Annotated[int, Field(ge=2, le=1_000_000)] = 50
    """Readings that set the baseline mean and standard deviation."""


class CusumStep(DetectorStepModel):
    """``cusum: {k, h, warmup}``: slow drift away from the learned baseline."""

    OP: ClassVar[str] = "cusum"
    cusum: Annotated[CusumParams, BeforeValidator(_none_is_empty)]

    def params(self) -> DetectorParams:
        return self.cusum

    def factory(self) -> ScorerFactory:
        p = self.cusum
        return lambda: CusumScorer(p.k, p.h, p.warmup)


class PageHinkleyParams(DetectorParams):
    delta: Annotated[NonNegativeFloat, Field(allow_inf_nan=False)] = 0.5
    """Tolerated change of the mean, in standard deviations: smaller shifts are ignored."""
    threshold: Limit = 20.0
    """Decision limit of the cumulative deviation, in standard deviations."""
    warmup: Annotated[int, Field(ge=2, le=1_000_000)] = 50
    """Readings that set the scale (standard deviation), again after each finding."""
    period: PositiveDuration | None = None
    """Test the residual from a seasonal profile of this period (e.g. ``1d``) instead of the
    value: a drift under a daily cycle."""
    buckets: Annotated[int, Field(ge=1, le=10_000)] = 288
    """Slots of the seasonal profile."""
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Weight of each pass of the period in a slot of the profile."""


class PageHinkleyStep(DetectorStepModel):
    """``page_hinkley: {delta, threshold, warmup}``: the mean drifts away from its running mean."""

    OP: ClassVar[str] = "page_hinkley"
    page_hinkley: Annotated[PageHinkleyParams, BeforeValidator(_none_is_empty)]

    def params(self) -> DetectorParams:
        return self.page_hinkley

    def factory(self) -> ScorerFactory:
        p = self.page_hinkley
        period = p.period
        if period is None:
            return lambda: PageHinkleyScorer(p.delta, p.threshold, p.warmup)
        return lambda: PageHinkleyScorer(
            p.delta, p.threshold, p.warmup, SeasonalProfile(period, p.buckets, p.alpha)
        )


class StuckParams(DetectorParams):
    epsilon: Annotated[NonNegativeFloat, Field(allow_inf_nan=False)] = 0.0
    count: Annotated[int, Field(ge=2, le=1_000_000)] | None = None
    """Readings within epsilon of the first of the run."""
    duration: PositiveDuration | None = None
    """Event time the value has stayed within epsilon."""

    @model_validator(mode="after")
    def _check(self) -> StuckParams:
        if self.count is None and self.duration is None:
            raise ValueError("set count, duration or both")
        return self


class StuckStep(DetectorStepModel):
    """``stuck: {epsilon, count, duration}``: flatline, the value no longer moves."""

    OP: ClassVar[str] = "stuck"
    stuck: StuckParams

    def params(self) -> DetectorParams:
        return self.stuck

    def factory(self) -> ScorerFactory:
        p = self.stuck
        return lambda: StuckScorer(p.epsilon, p.count, p.duration)


class AnomalyParams(DetectorParams):
    """Defaults chosen once, one configuration for all files, on the NAB sample (README).

    ``window`` readings for the level and residual references, ``limit`` robust sigmas,
    ``min_count`` readings before any verdict, a ``period`` (default a day) cut into
    ``buckets`` time-of-day slots learnt with weight ``alpha`` per pass, a spread ``floor``;
    a point anomaly must be ``novelty`` new against the last ``memory`` readings, a
    time-of-day anomaly must ``persist`` for that many readings. An episode clears after
    ``clear_after`` normal readings.
    """

    window: Annotated[int, Field(ge=10, le=100_000)] = 600
    limit: Limit = 5.0
    min_count: Count = 300
    period: PositiveDuration = 86400.0
    buckets: Annotated[int, Field(ge=1, le=10_000)] = 288
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.3
    floor: Annotated[NonNegativeFloat, Field(le=1)] = 0.02
    memory: Annotated[int, Field(ge=1, le=100_000)] = 2016
    novelty: Annotated[NonNegativeFloat, Field(le=1)] = 0.05
    persist: Annotated[int, Field(ge=1, le=10_000)] = 6
    clear_after: Count = 50


class AnomalyStep(DetectorStepModel):
    """``anomaly: {...}``: the recommended default detector for signals you know nothing about."""

    OP: ClassVar[str] = "anomaly"
    anomaly: Annotated[AnomalyParams, BeforeValidator(_none_is_empty)]

    def params(self) -> DetectorParams:
        return self.anomaly

    def factory(self) -> ScorerFactory:
        p = self.anomaly
        return lambda: AnomalyScorer(
            p.window,
            p.limit,
            p.min_count,
            p.period,
            p.buckets,
            p.alpha,
            p.floor,
            p.memory,
            p.novelty,
            p.persist,
        )


class SilenceParams(StrictModel):
    after: PositiveDuration
    """A device+metric silent this long (event time, or processing time live) is reported."""
    severity: Severity = "warning"
    time: Literal["event", "processing"] = "event"
    """``event``: silence is measured against the watermark (the newest event time seen by
    the step), so replays give the same alerts; ``processing``: against the wall clock, for
    live sources whose whole fleet may fall silent at once."""


class SilenceStep(StepModel):
    """``silence: {after, severity, time}``: missing heartbeat; clears when data resumes."""

    OP: ClassVar[str] = "silence"
    silence: SilenceParams

    def build(self, ctx: StepContext) -> Operator:
        p = self.silence
        return silence.silence(p.after, p.severity, p.time == "event", ctx)


ActionTemplate = Annotated[str, AfterValidator(actions.check_template)]


class ActionParams(StrictModel):
    topic: TopicTemplate
    """Where to publish, e.g. ``plant/{gateway}/maintenance/{device}``."""
    payload: dict[Annotated[str, Field(min_length=1, max_length=64)], ActionTemplate] = {}
    """Payload fields, each a template over the alert's fields, e.g. ``{order: "bearing"}``."""
    kinds: list[str] | None = None
    """Detector kinds that trigger (default: any)."""
    severities: list[Severity] | None = None
    """Severities that trigger (default: any)."""
    on: list[Literal["raised", "cleared"]] = ["raised"]


class ActionStep(StepModel):
    """``action: {topic, payload, kinds, severities, on}``: publish a message on an alert."""

    OP: ClassVar[str] = "action"
    action: ActionParams

    def build(self, ctx: StepContext) -> Operator:
        p = self.action
        return actions.action(p.topic, p.payload, p.kinds, p.severities, p.on, ctx)


DETECTOR_MODELS: tuple[type[StepModel], ...] = (
    RangeStep,
    RateOfChangeStep,
    ZScoreStep,
    EwmaStep,
    MadStep,
    CusumStep,
    PageHinkleyStep,
    StuckStep,
    SpikeStep,
    SilenceStep,
    AnomalyStep,
    ActionStep,
)
